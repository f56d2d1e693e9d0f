"""Best effort, NVIDIA only: the SASS that NVIDIA's Vulkan driver made of vkq kernel variants.

    python3 scripts/nvidia_sass.py VARIANT[:NAME=VALUE,...]... [--out DIR] [--arch SM90]
    python3 scripts/nvidia_sass.py --from DIR [--arch SM90]

e.g. `q4gsw_gemv_sym_word_rw4r4u1k4x:GROUP_UNITS=1`. The first form builds each variant on
the default device and writes DIR/VARIANT.pcache (+ .json, its compiler statistics); where
the disassembly tools are present it goes on as the second form does, which turns every
.pcache in DIR into VARIANT.sass and prints the registers and the most frequent opcodes
(so the dump can be made on the GPU machine and disassembled elsewhere).

How: the variant is built alone in a fresh device, whose pipeline cache is then read back.
NVIDIA's cache entry holds a zstd frame; the machine code inside it is the driver's "Binary
Size" statistic worth of bytes ending after the NOP padding that closes the code, and
`nvdisasm -b SM90` disassembles those raw bytes. None of this is documented, so any driver
can break it (checked with NVIDIA 580.159.04 on the H100, where it showed the compiler
splitting the GEMV's nibble mask-and-exponent into two LOP3s). Needs the Python `zstandard`
module or the `zstd` program, and `nvdisasm` (CUDA toolkit, or Triton's bundled copy) on PATH
or in $NVDISASM.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vkq.runtime import Device  # noqa: E402
from vkq.runtime.vk import check, ffi, lib  # noqa: E402
from vkq.shaderlib import parse_spec_constants  # noqa: E402

ZSTD_MAGIC = bytes.fromhex("28b52ffd")
SASS_NOP = bytes.fromhex("1879000000000000")  # low half of the sm_90 NOP encoding


def parse_variant(arg: str) -> tuple[str, dict[str, int | float]]:
    name, _, spec = arg.partition(":")
    try:
        return name, parse_spec_constants(filter(None, spec.split(",")))
    except ValueError as e:
        raise SystemExit(f"{arg}: {e}") from None


def pipeline_cache_blob(name: str, spec: dict[str, int | float]) -> tuple[bytes, dict]:
    """The pipeline cache of a fresh device holding only this kernel, and its statistics."""
    with Device() as dev:
        if not dev.caps.pipeline_statistics:
            raise SystemExit(f"{dev.caps.name}: no compiler statistics, so no binary size")
        kernel = dev.kernel(name, **spec)
        stats = kernel.statistics()
        size = ffi.new("size_t*")
        check(lib.vkGetPipelineCacheData(dev.handle, dev.pipeline_cache, size, ffi.NULL),
              "vkGetPipelineCacheData")
        data = ffi.new("char[]", size[0])
        check(lib.vkGetPipelineCacheData(dev.handle, dev.pipeline_cache, size, data),
              "vkGetPipelineCacheData")
        return ffi.buffer(data, size[0])[:], stats


def zstd_tool() -> str | None:
    """"module" (Python zstandard), "program" (the zstd CLI) or None."""
    try:
        import zstandard  # noqa: F401
        return "module"
    except ImportError:
        return "program" if shutil.which("zstd") else None


def zstd_decompress(frame: bytes) -> bytes:
    tool = zstd_tool()
    if tool == "module":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(frame)
    if tool == "program":
        return subprocess.run(["zstd", "-d", "-c"], input=frame, capture_output=True,
                              check=True).stdout
    raise SystemExit("needs the Python 'zstandard' module or the 'zstd' program")


def machine_code(blob: bytes, binary_size: int) -> bytes:
    start = blob.find(ZSTD_MAGIC)
    if start < 0:
        raise SystemExit("no zstd frame in the pipeline cache: unknown driver format")
    payload = zstd_decompress(blob[start:])
    last_nop = payload.rfind(SASS_NOP)
    if last_nop < 0 or last_nop + 16 < binary_size:
        raise SystemExit("no NOP padding found: unknown driver format")
    end = last_nop + 16
    return payload[end - binary_size:end]


def find_nvdisasm() -> str:
    for cand in (os.environ.get("NVDISASM"), shutil.which("nvdisasm"),
                 *sorted(str(p) for p in Path("/usr/local").glob("cuda*/bin/nvdisasm"))):
        if cand and Path(cand).exists():
            return cand
    raise SystemExit("nvdisasm not found: install the CUDA toolkit or set $NVDISASM")


def opcode_counts(sass: str) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in sass.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].startswith("/*"):
            op = parts[2] if parts[1].startswith("@") else parts[1]
            counts[op.rstrip(";").split(".")[0]] += 1
    return counts


def missing_tools() -> list[str]:
    missing = [] if zstd_tool() else ["zstd (or the Python 'zstandard' module)"]
    try:
        find_nvdisasm()
    except SystemExit:
        missing.append("nvdisasm")
    return missing


def dump(args: list[str], out: Path) -> None:
    for arg in args:
        name, spec = parse_variant(arg)
        blob, stats = pipeline_cache_blob(name, spec)
        (out / f"{name}.pcache").write_bytes(blob)
        (out / f"{name}.json").write_text(json.dumps(stats))
        print(f"{name}: pipeline cache in {out / (name + '.pcache')}")


def disassemble(directory: Path, arch: str) -> None:
    nvdisasm = find_nvdisasm()
    for cache in sorted(directory.glob("*.pcache")):
        name = cache.stem
        stats = json.loads((directory / f"{name}.json").read_text())
        raw = directory / f"{name}.bin"
        raw.write_bytes(machine_code(cache.read_bytes(), int(stats["Binary Size"])))
        sass = subprocess.run([nvdisasm, "-b", arch, str(raw)], capture_output=True,
                              text=True, check=True).stdout
        raw.unlink()
        (directory / f"{name}.sass").write_text(sass)
        top = ", ".join(f"{op} {n}" for op, n in opcode_counts(sass).most_common(10))
        print(f"{name}: {stats.get('Register Count')} registers; {top}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", metavar="VARIANT[:NAME=VALUE,...]")
    ap.add_argument("--from", dest="source", type=Path, help="disassemble the dumps in this folder")
    ap.add_argument("--arch", default="SM90", help="nvdisasm -b architecture (H100: SM90)")
    ap.add_argument("--out", type=Path, default=Path("."), help="where the dumps and .sass go")
    args = ap.parse_args()
    if args.source is not None:
        disassemble(args.source, args.arch)
        return 0
    if not args.variants:
        ap.error("name at least one variant, or --from DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    dump(args.variants, args.out)
    missing = missing_tools()
    if missing:
        print(f"{' and '.join(missing)} not found here: run `python3 {sys.argv[0]} --from "
              f"{args.out}` where they are")
    else:
        disassemble(args.out, args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
