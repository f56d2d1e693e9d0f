"""`python -m vkq info | bench | stats`."""
from __future__ import annotations

import argparse
import os
import sys

from vkq.runtime import Device, Instance, UnsupportedDevice, choose_device
from vkq.shaderlib import ShaderError, parse_spec_constants


def cmd_info(args: argparse.Namespace) -> int:
    from vkq.ops import variant_choices
    with Instance(validation=False) as inst:
        devices = inst.devices()
        if not devices:
            print("no Vulkan devices found")
            return 1
        default = choose_device(devices)[0]
        for idx, _, caps in devices:
            mark = "  (default)" if idx == default else ""
            print(f"[{idx}] {caps.name} — {caps.device_type}, Vulkan "
                  f"{'.'.join(map(str, caps.api_version))}, {caps.driver}{mark}")
            for k, v in caps.summary().items():
                if k not in ("name", "device_type", "api_version", "driver"):
                    print(f"      {k:34s} {v}")
            print("      kernel variants vkq would pick:")
            for op, variant in variant_choices(caps).items():
                print(f"        {op:32s} {variant}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vkq.bench.runner import format_table, run, save_json
    with Device(args.device) as dev:
        quick = args.quick if args.quick is not None else dev.caps.device_type == "cpu"
        print(f"device: {dev.caps.name} ({dev.caps.driver}){' [quick shapes]' if quick else ''}",
              flush=True)
        rows, meta = run(dev, args.only, quick, args.repeats, frozenset(args.compare),
                         args.roofline_mib << 20 if not quick else min(args.roofline_mib, 128) << 20)
    print(format_table(rows))
    if args.json:
        save_json(args.json, rows, meta)
        print(f"wrote {args.json}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        spec = parse_spec_constants(args.spec)
    except ValueError as e:
        raise SystemExit(f"vkq stats: --spec {e}") from None
    with Device(args.device) as dev:
        try:  # built first, so a wrong name or constant fails on every device alike
            kernels = [dev.kernel(v, **spec) for v in args.variants]
        except (ShaderError, UnsupportedDevice, ValueError) as e:
            raise SystemExit(f"vkq stats: {e}") from None
        if not dev.caps.pipeline_statistics:
            print(f"{dev.caps.name} does not report compiler statistics "
                  "(no VK_KHR_pipeline_executable_properties); nothing to show")
            return 0
        for k in kernels:
            stats = k.statistics()
            print(f"{k.name}: " + (", ".join(f"{n}={v}" for n, v in stats.items()) or "(none)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vkq")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="list devices, capabilities and the kernel variants vkq picks")
    b = sub.add_parser("bench", help="measure the read roofline and every registered benchmark")
    b.add_argument("--device", default=None, help="index or name substring (default: $VKQ_DEVICE or best)")
    b.add_argument("--only", nargs="*", help="suite names to run")
    b.add_argument("--json", help="also write the results to this file")
    b.add_argument("--repeats", type=int, default=20)
    b.add_argument("--compare", nargs="*", default=[], choices=["torch"],
                   help="also time peers on the same GPU (torch with CUDA)")
    b.add_argument("--roofline-mib", type=int, default=1024)
    q = b.add_mutually_exclusive_group()
    q.add_argument("--quick", dest="quick", action="store_true", default=None,
                   help="small shapes (default on CPU devices such as lavapipe)")
    q.add_argument("--full", dest="quick", action="store_false", help="full shapes even on CPU devices")
    st = sub.add_parser("stats", help="the driver's compiler statistics (registers, spills, ...) "
                                      "of kernel variants")
    st.add_argument("variants", nargs="+", metavar="VARIANT")
    st.add_argument("--spec", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help="specialization constants, applied to every variant (after the variants)")
    st.add_argument("--device", default=None, help="index or name substring (default: $VKQ_DEVICE or best)")
    args = ap.parse_args(argv)
    return {"info": cmd_info, "bench": cmd_bench, "stats": cmd_stats}[args.cmd](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`python -m vkq info | head`): not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        sys.exit(1)
