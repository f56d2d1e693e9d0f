"""`python -m vkq.compile_shaders`: render every declared variant and compile the changed ones.

    python -m vkq.compile_shaders            # compile what is missing or stale, in parallel
    python -m vkq.compile_shaders --check    # report missing/stale output, write nothing
    python -m vkq.compile_shaders --force    # recompile everything
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
from pathlib import Path

from vkq import shader_toolchain, shaderlib


def stale_variants(out_dir: Path) -> tuple[list[str], list[str]]:
    """(missing, stale) variant names relative to the manifest in out_dir."""
    manifest = shaderlib.read_manifest(out_dir)
    missing, stale = [], []
    for name in sorted(shaderlib.declared_variants()):
        entry = manifest.get(name)
        if entry is None or not (out_dir / entry["file"]).exists():
            missing.append(name)
        elif entry["hash"] != shaderlib.variant_info(name).hash:
            stale.append(name)
    return missing, stale


def build(names: list[str], out_dir: Path, jobs: int) -> list[str]:
    """Compile names in parallel into out_dir; return error messages (empty on success)."""
    infos = [shaderlib.variant_info(n) for n in names]
    done, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(shaderlib.compile_variant, info): info for info in infos}
        for fut in concurrent.futures.as_completed(futures):
            info = futures[fut]
            try:
                done.append((info, fut.result()))
            except shaderlib.ShaderError as e:
                errors.append(str(e))
    if done:
        shaderlib.write_output(out_dir, done)
    return errors


def _describe_compiler() -> str:
    tc = shader_toolchain.find()
    if tc is None:
        return f"compiler: none found ({shader_toolchain.INSTALL_HINT})"
    coopmat = "yes" if shader_toolchain.supports("cooperative_matrix") else "no"
    return f"compiler: {tc.glslang} ({shader_toolchain.version()}); cooperative matrices: {coopmat}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vkq.compile_shaders", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=shaderlib.BUILD_DIR, help="output directory")
    ap.add_argument("--check", action="store_true", help="report missing/stale output; exit 1 if any")
    ap.add_argument("--force", action="store_true", help="recompile every variant")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    try:
        missing, stale = stale_variants(args.out)
    except shaderlib.ShaderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = len(shaderlib.declared_variants())
    if args.check:
        coopmat = sum("cooperative_matrix" in shaderlib.variant_info(n).requires
                      for n in shaderlib.declared_variants())
        print(_describe_compiler())
        print(f"{coopmat} variants need cooperative matrices (the manifest's `requires`)")
        for n in missing:
            print(f"missing: {n}")
        for n in stale:
            print(f"stale:   {n}")
        print(f"{total - len(missing) - len(stale)}/{total} variants up to date in {args.out}")
        return 1 if (missing or stale) else 0
    todo = sorted(shaderlib.declared_variants()) if args.force else missing + stale
    errors = build(todo, args.out, args.jobs)
    for name in shaderlib.prune_output(args.out, shaderlib.declared_variants()):
        print(f"removed {name} (no longer declared)")
    for e in errors:
        print(e, file=sys.stderr)
    print(f"compiled {len(todo) - len(errors)} of {len(todo)} changed variants "
          f"({total} declared) into {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
