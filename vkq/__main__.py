"""`python -m vkq info | bench | stats`.

Mistakes a user can make or meet (an option out of range, a device selector that matches
nothing, no Vulkan driver, a bad environment variable) end the command with one line on
stderr that names what was typed, and a non-zero exit; never a traceback. Anything else is a
bug and keeps its traceback. (No Vulkan loader at all fails while `vkq` itself is imported;
`vkq/__init__.py` turns that into the same one line.)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vkq.models.sampling import Sampler
from vkq.runtime import (Device, Instance, UnsupportedDevice, VulkanError, VulkanUnavailable,
                         choose_device)
from vkq.runtime.env import EnvironmentVariableError
from vkq.shaderlib import ShaderError, parse_spec_constants

PROG = "python -m vkq"
# What the machine or the user's input can cause, reported in one line (see the docstring).
USER_ERRORS = (VulkanUnavailable, VulkanError, EnvironmentVariableError, UnsupportedDevice,
               ShaderError, TimeoutError)
DEVICE_HELP = "device index or name substring, as `info` lists them (default: $VKQ_DEVICE, " \
              "else the first discrete GPU, integrated GPU, then CPU)"


class CommandError(Exception):
    """A value the user typed that turned out wrong after parsing (e.g. an unknown variant)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors in one line that says where the usage is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str,
            name: str) -> Callable[[str], Any]:
    """An argparse type: `parse(text)` where `ok` holds, else an error saying `expected`."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    convert.__name__ = name
    return convert


positive_int = _number(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0", "non_negative_float")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]", "probability")


def spec_constant(text: str) -> dict[str, int | float]:
    """argparse type: one NAME=VALUE specialization constant."""
    try:
        return parse_spec_constants([text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_info(args: argparse.Namespace) -> int:
    """List every device; mark the one `--device` (or $VKQ_DEVICE, or the default rule)
    picks. A selector that matches none is reported after the list, which is what helps
    choose one."""
    from vkq.ops import variant_choices
    with Instance(validation=False) as inst:
        devices = inst.devices()
        try:
            chosen, problem = choose_device(devices, args.device, "--device")[0], None
        except VulkanUnavailable as e:
            chosen, problem = None, e
        mark = "  (--device)" if args.device is not None else "  (default)"
        for idx, _, caps in devices:
            print(f"[{idx}] {caps.name} — {caps.device_type}, Vulkan "
                  f"{'.'.join(map(str, caps.api_version))}, {caps.driver}"
                  f"{mark if idx == chosen else ''}")
            for k, v in caps.summary().items():
                if k not in ("name", "device_type", "api_version", "driver"):
                    print(f"      {k:34s} {v}")
            print("      kernel variants vkq would pick:")
            for op, variant in variant_choices(caps).items():
                print(f"        {op:32s} {variant}")
    if problem is not None:
        sys.stdout.flush()  # the list first, then the error under it
        raise problem
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vkq.bench.runner import format_table, run, save_json
    if args.json and not Path(args.json).resolve().parent.is_dir():  # before, not after, the run
        raise CommandError(f"--json {args.json}: directory {Path(args.json).parent} does not exist")
    with Device(args.device, selector_origin="--device") as dev:
        quick = args.quick if args.quick is not None else dev.caps.device_type == "cpu"
        print(f"device: {dev.caps.name} ({dev.caps.driver}){' [quick shapes]' if quick else ''}",
              flush=True)
        roofline_mib = min(args.roofline_mib, 128) if quick else args.roofline_mib
        rows, meta = run(dev, args.only, quick, args.repeats, frozenset(args.compare),
                         roofline_mib << 20, frozenset(args.m) if args.m else None)
    print(format_table(rows))
    if args.json:
        save_json(args.json, rows, meta)
        print(f"wrote {args.json}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    spec = {k: v for one in args.spec for k, v in one.items()}
    with Device(args.device, selector_origin="--device") as dev:
        try:  # built first, so a wrong name or constant fails on every device alike
            kernels = [dev.kernel(v, **spec) for v in args.variants]
        except ValueError as e:  # an unknown specialization constant
            raise CommandError(str(e)) from None
        if not dev.caps.pipeline_statistics:
            print(f"{dev.caps.name} does not report compiler statistics "
                  "(no VK_KHR_pipeline_executable_properties); nothing to show")
            return 0
        for k in kernels:
            stats = k.statistics()
            print(f"{k.name}: " + (", ".join(f"{n}={v}" for n, v in stats.items()) or "(none)"))
    return 0


class ProgressLine:
    """A one-line progress bar on stderr for `progress(what, done, total)` callbacks
    (LlamaWeights.from_hf, .to_device): redrawn in place on a terminal; elsewhere (a log,
    a pipe) only the finished line is written, so logs get no carriage-return clutter."""

    WIDTH = 24

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.start: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        import time
        now = time.perf_counter()
        t0 = self.start.setdefault(what, now)
        fill = self.WIDTH * done // max(total, 1)
        line = f"{what} [{'#' * fill}{'.' * (self.WIDTH - fill)}] {done}/{total} {now - t0:.1f} s"
        if done >= total:
            self.stream.write(("\r" if self.stream.isatty() else "") + line + "\n")
        elif self.stream.isatty():
            self.stream.write("\r" + line)
        self.stream.flush()


def sampler_from(args: argparse.Namespace) -> Sampler | None:
    """The sampler the generate flags ask for; None (greedy on the device) by default."""
    if args.temperature == 0:
        extra = [f for f, v in (("--top-k", args.top_k), ("--top-p", args.top_p), ("--seed", args.seed))
                 if v is not None]
        if extra:
            raise CommandError(f"{'/'.join(extra)}: only for sampling; add --temperature T "
                               f"(> 0; the default 0 decodes greedily)")
        return None
    if not (args.prompt or args.prompt_ids):
        raise CommandError("--temperature samples a generated text: it needs --checkpoint with "
                           "--prompt or --prompt-ids")
    return Sampler(args.temperature, args.top_k, 1.0 if args.top_p is None else args.top_p, args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    import time

    from vkq.models.llama import CONFIGS, LlamaModel, LlamaWeights, benchmark, check_tokens, load_tokenizer
    from vkq.models.safetensors import CheckpointError
    if args.random_weights and args.checkpoint:
        raise CommandError("--random-weights and --checkpoint exclude each other")
    if (args.prompt_ids or args.prompt) and not args.checkpoint:
        raise CommandError("--prompt and --prompt-ids need --checkpoint (random weights generate noise)")
    sampler = sampler_from(args)
    tokenizer = None
    if args.prompt:
        try:
            tokenizer = load_tokenizer(args.checkpoint)
        except CheckpointError as e:
            raise CommandError(str(e)) from None
        if tokenizer is None:
            raise CommandError(f"--prompt: {args.checkpoint} has no tokenizer.json; pass --prompt-ids")
        prompt = tokenizer.encode(args.prompt).ids
    else:
        prompt = _token_ids(args.prompt_ids) if args.prompt_ids else None
    qargs = {"group_size": args.group_size, "symmetric": not args.asymmetric}
    quant = f"int4 g{args.group_size} {'asymmetric' if args.asymmetric else 'symmetric'}"
    with Device(args.device, selector_origin="--device") as dev:
        if args.checkpoint:
            print(f"device: {dev.caps.name}; {args.checkpoint}, linears quantized to {quant}",
                  flush=True)
            try:
                weights = LlamaWeights.from_hf(args.checkpoint, progress=ProgressLine(), **qargs)
            except CheckpointError as e:
                raise CommandError(str(e)) from None
            if prompt is not None:  # checked before the upload, not by the prefill after it
                try:
                    check_tokens(prompt, weights.config.vocab)
                except ValueError as e:
                    raise CommandError(f"{'--prompt' if args.prompt else '--prompt-ids'}: {e}") from None
        else:
            config = CONFIGS[args.config]
            if config.hidden % args.group_size or config.intermediate % args.group_size:
                raise CommandError(f"--group-size {args.group_size} must divide {args.config}'s widths "
                                   f"({config.hidden}, {config.intermediate})")
            print(f"device: {dev.caps.name}; {args.config} with random {quant} weights", flush=True)
            big = config.layers * config.hidden * config.intermediate > 1 << 26
            make = LlamaWeights.random_repeated if big else LlamaWeights.random
            weights = make(config, **qargs)
        weights = weights.to_device(dev, progress=ProgressLine())  # the upload is not the prefill's
        need = (len(prompt) if prompt else args.prompt_tokens) + args.tokens + 1
        model = LlamaModel(weights, dev, max_seq=max(args.max_seq, need))
        try:
            if prompt is not None:
                t = time.perf_counter()
                logits = model.prefill(prompt)
                token = int(np.argmax(logits))
                start = time.perf_counter()
                if sampler is not None:  # the first token too is drawn, not the argmax
                    token = sampler(logits)
                out = [token] + model.generate(token, args.tokens - 1, sampler)
                end = time.perf_counter()
                print("generated:", ",".join(map(str, out)))
                if tokenizer is not None:
                    print("text:", tokenizer.decode(out))
                print(f"prefill {len(prompt) / (start - t):.1f} tok/s, decode "
                      f"{(len(out) - 1) / max(end - start, 1e-9):.1f} tok/s")
            else:
                r = benchmark(model, args.prompt_tokens, args.tokens)
                print(f"prefill: {args.prompt_tokens} tokens, {r['prefill_tok_s']:.1f} tok/s")
                print(f"decode:  {args.tokens} tokens, {r['decode_tok_s']:.1f} tok/s "
                      f"(GPU {r['decode_gpu_ms']:.3f} ms per token)")
        finally:
            model.close()
    return 0


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CommandError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    if not ids:
        raise CommandError("--prompt-ids: no token ids given")
    return ids


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog=PROG, description="Vulkan compute kernels for quantized linear layers.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    i = sub.add_parser("info", help="list devices, capabilities and the kernel variants vkq picks")
    i.add_argument("--device", help=DEVICE_HELP + "; info lists every device and marks this one")
    i.set_defaults(run=cmd_info)

    b = sub.add_parser("bench", help="measure the read roofline and every registered benchmark")
    b.add_argument("--device", help=DEVICE_HELP)
    b.add_argument("--only", nargs="*", metavar="SUITE",
                   help="run only these suites (default: all; an unknown name lists them)")
    b.add_argument("--json", metavar="FILE", help="also write the results to this file")
    b.add_argument("--repeats", type=positive_int, default=20,
                   help="timed repetitions per measurement (default: %(default)s)")
    b.add_argument("--compare", nargs="*", default=[], choices=["torch", "torch-compile"],
                   help="also time peers on the same GPU (torch with CUDA; the llama suite's "
                        "need transformers; torch-compile adds its torch.compile'd fp16 peer)")
    b.add_argument("--m", nargs="+", type=positive_int, metavar="M",
                   help="time only problems of these row counts in the linear suites "
                        "(q4gsw_linear, q8ta_linear, qta8a_linear; 1 = the GEMV rows), e.g. "
                        "--m 512 2048 for the prefill GEMMs")
    b.add_argument("--roofline-mib", type=positive_int, default=1024, metavar="MIB",
                   help="size of the buffer the read roofline streams, capped by the device's "
                        "limits (default: %(default)s; at most 128 with quick shapes)")
    q = b.add_mutually_exclusive_group()
    q.add_argument("--quick", dest="quick", action="store_true", default=None,
                   help="small shapes (default on CPU devices such as lavapipe)")
    q.add_argument("--full", dest="quick", action="store_false",
                   help="full shapes even on CPU devices")
    b.set_defaults(run=cmd_bench)

    st = sub.add_parser("stats", help="the driver's compiler statistics (registers, spills, ...) "
                                      "of kernel variants")
    st.add_argument("variants", nargs="+", metavar="VARIANT",
                    help="kernel variant names, as `info` and vkq/spirv/manifest.json name them")
    st.add_argument("--spec", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    type=spec_constant,
                    help="specialization constants, applied to every variant (after the variants)")
    st.add_argument("--device", help=DEVICE_HELP)
    st.set_defaults(run=cmd_stats)

    from vkq.models.llama import CONFIGS
    gen = sub.add_parser("generate", help="run a Llama model (random int4 weights) and print "
                                          "prefill and decode tokens per second")
    gen.add_argument("--config", choices=sorted(CONFIGS), default="tiny",
                     help="model shape for random int4 g32 weights (default: %(default)s)")
    gen.add_argument("--random-weights", action="store_true",
                     help="random int4 weights of --config's shape (the default without --checkpoint)")
    gen.add_argument("--checkpoint", metavar="DIR",
                     help="a Hugging Face Llama folder (config.json + *.safetensors) instead of "
                          "random weights; its linears are quantized to int4")
    gen.add_argument("--group-size", type=positive_int, default=32,
                     help="int4 quantization group size (default: %(default)s)")
    gen.add_argument("--asymmetric", action="store_true",
                     help="int4 with a zero point per group (default: symmetric)")
    gen.add_argument("--prompt-ids", metavar="IDS",
                     help="with --checkpoint: comma-separated prompt token ids; prints the "
                          "generated ids")
    gen.add_argument("--prompt", metavar="TEXT",
                     help="with --checkpoint: prompt text, encoded and the output decoded by the "
                          "folder's tokenizer.json (needs the `tokenizers` package)")
    gen.add_argument("--tokens", type=positive_int, default=32,
                     help="decode steps to time (default: %(default)s)")
    gen.add_argument("--prompt-tokens", type=positive_int, default=16,
                     help="random prompt length for the prefill (default: %(default)s)")
    gen.add_argument("--max-seq", type=positive_int, default=2048,
                     help="KV cache positions (default: %(default)s)")
    gen.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                     help="with a prompt: sample each token from softmax(logits / T) on the host "
                          "(the logits are downloaded; numpy draws); 0, the default, is greedy "
                          "decoding with the argmax on the device")
    gen.add_argument("--top-k", type=positive_int, metavar="K",
                     help="with --temperature: sample among the K most likely tokens only")
    gen.add_argument("--top-p", type=probability, metavar="P",
                     help="with --temperature: sample among the most likely tokens whose "
                          "probabilities add up to P (nucleus sampling; 0 < P <= 1)")
    gen.add_argument("--seed", type=int, help="with --temperature: the sampler's random seed "
                                              "(the same seed, the same tokens)")
    gen.add_argument("--device", help=DEVICE_HELP)
    gen.set_defaults(run=cmd_generate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, *USER_ERRORS) as e:
        raise SystemExit(f"{PROG} {args.cmd}: error: {e}") from None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`python -m vkq info | head`): not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        sys.exit(1)
