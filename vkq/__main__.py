"""`python -m vkq info | bench`."""
from __future__ import annotations

import argparse
import sys

from vkq.runtime import Device, Instance, choose_device


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
    args = ap.parse_args(argv)
    return {"info": cmd_info, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
