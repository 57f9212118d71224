"""Repack the GPU bundle (`.gpu/c1`, `.gpu/c2`, ... from ../shared/gpu/build-bundle.sh) into fewer, smaller chunks.

Why: each device call carries the working tree plus one chunk within 64 MiB. The build script's 60 MB chunks stopped
fitting once the tree reached ~8 MB (bench/results holds the GPU runs), so the chunks are refilled, largest files
first, up to `--cap` bytes each (55.5 MB: three chunks beside a tree of up to ~11 MB; 57 MB stopped fitting at 9.8 MB). `setup-on-gpu.sh` goes into the last chunk, which the last call
carries with the work (../shared/gpu/README.md). The vLLM parts keep their names, so `cat vllm.part_*` still works.

    python scripts/rechunk_gpu_bundle.py [--cap 55500000] [--part 44000000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

PARTS = "vllm.part_"


def _resplit(parts: list[Path], into: Path, size: int) -> None:
    """The vLLM tarball's parts (the build script's are 60 MB) joined and cut again into `size`-byte parts, named in
    the same order (aa, ab, ...), so that `cat vllm.part_*` on the GPU machine gives the same tarball."""
    names = (f"{PARTS}{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz")
    out, written = None, 0
    for part in parts:
        with part.open("rb") as src:
            while block := src.read(1 << 20):
                while block:
                    if out is None:
                        out, written = (into / next(names)).open("wb"), 0
                    take = block[: size - written]
                    out.write(take)
                    written += len(take)
                    block = block[len(take) :]
                    if written == size:
                        out.close()
                        out = None
    if out is not None:
        out.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(".gpu"))
    p.add_argument("--cap", type=int, default=55_500_000, help="most bytes per chunk")
    p.add_argument("--part", type=int, default=44_000_000, help="bytes per part of the vLLM tarball")
    args = p.parse_args()
    files = [f for f in args.root.glob("c*/*") if f.is_file()]
    setup = next(f for f in files if f.name == "setup-on-gpu.sh")
    if too_large := [f.name for f in files if f.stat().st_size > args.cap and not f.name.startswith(PARTS)]:
        raise SystemExit(f"larger than --cap: {', '.join(too_large)}")
    staging = args.root / "staging"
    staging.mkdir()
    parts = sorted((f for f in files if f.name.startswith(PARTS)), key=lambda f: f.name)
    _resplit(parts, staging, min(args.part, args.cap))
    for f in files:
        if not f.name.startswith(PARTS):
            shutil.move(f, staging / f.name)
    for old in args.root.glob("c*"):
        shutil.rmtree(old)
    bins: list[tuple[int, list[Path]]] = []  # first fit, largest first
    for f in sorted(staging.iterdir(), key=lambda f: -f.stat().st_size):
        if f.name == setup.name:
            continue
        size = f.stat().st_size
        for i, (used, members) in enumerate(bins):
            if used + size <= args.cap:
                bins[i] = (used + size, [*members, f])
                break
        else:
            bins.append((size, [f]))
    for n, (used, members) in enumerate(bins, 1):
        chunk = args.root / f"c{n}"
        chunk.mkdir()
        for f in members:
            shutil.move(f, chunk / f.name)
        print(f"{chunk}: {used / 1e6:.1f} MB, {len(members)} files")
    shutil.move(staging / setup.name, args.root / f"c{len(bins)}" / setup.name)
    staging.rmdir()


if __name__ == "__main__":
    main()
