"""GPU check of the first-chunk lane (run on the GPU machine before a suite): the decoder as the server builds it
(compiled blocks, both graph sets, the lane's own stream), many streams whose first chunks run beside long passes.

Passes when no stream failed, every stream got audio of the expected length, and the lane decoded first chunks
while the worker's passes ran. Usage: python3 -m bench.check_lane_cuda --decoder /tmp/g4v_full/glm-4-voice-decoder
Its compile caches go to a temporary folder, so a server started afterwards still starts cold (honest ready_s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path


async def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from glm4voice_api.config import Settings
    from glm4voice_api.models.speech_decoder.flow_graphs import GraphedCFM
    from glm4voice_api.pipeline.runtime import _build_scheduler, _load_audio_input

    decoder_options = {"compile_blocks": args.compile, "max_batch": 16, "first_lane": args.lane, "dtype": "bfloat16"}
    settings = Settings(cache_dir=Path(args.cache), speech_decoder=decoder_options)
    start = time.perf_counter()
    scheduler = await asyncio.to_thread(_build_scheduler, settings, args.decoder, "cuda")
    if scheduler.lane is not None and not args.lane_graphs:  # the lane's ODE eager (fresh buffers per pass)
        scheduler.lane.runner = GraphedCFM(scheduler.decoder.flow.decoder, use_graphs=False)
    if scheduler.lane is not None:
        scheduler.lane.own_stream = args.lane_stream
    audio_input = await asyncio.to_thread(_load_audio_input, settings, args.tokenizer) if args.tokenizer else None
    built_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    streams, tokens = args.streams, args.tokens

    async def one(i: int) -> int:
        await asyncio.sleep(i / streams)  # starts spread over 1 s, as the suite's
        if audio_input is not None:  # the speech tokenizer's work beside the decoder's, as in the server
            await audio_input.tokenize(rng.standard_normal(48000).astype(np.float32) * 0.1)
        stream = scheduler.open_stream()
        seq = rng.integers(0, 16384, tokens).tolist()
        got = 0

        async def read() -> None:
            nonlocal got
            async for chunk in stream.audio():
                assert np.isfinite(chunk).all()
                got += len(chunk)

        reader = asyncio.ensure_future(read())
        for k in range(0, tokens, 26):  # a 26-token audio block every ~13 + 26 LLM steps of ~15 ms
            await asyncio.sleep(0.5)
            stream.push(seq[k : k + 26])
        stream.push([], final=True)
        await reader
        stream.close()
        return got

    start = time.perf_counter()
    lengths = await asyncio.gather(*(one(i) for i in range(streams)))
    wall = time.perf_counter() - start
    lane = scheduler.lane
    out = {
        "variant": {k: getattr(args, k) for k in ("compile", "lane", "lane_graphs", "lane_stream")}
        | {"tokenizer": bool(args.tokenizer)},
        "built_s": round(built_s, 1),
        "wall_s": round(wall, 1),
        "failures": scheduler.failures,
        "samples": sorted(set(lengths)),
        "worker_passes": scheduler.batches,
        "lane_passes": lane.passes if lane else None,
        "lane_chunks": lane.chunks if lane else None,
        "first_audio_ms": {
            k: round(1000 * getattr(scheduler, f"first_{k}_s") / max(1, scheduler.first_chunks), 1)
            for k in ("supply", "wait", "pass")
        },
    }
    await scheduler.close()
    ok = scheduler.failures == 0 and len(set(lengths)) == 1 and lengths[0] > 0 and (lane is None or lane.passes > 0)
    out["ok"] = bool(ok)
    return out


def variants(args: argparse.Namespace) -> None:
    """Each variant in a process of its own (an illegal memory access ends the process's CUDA context)."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "bench.check_lane_cuda", "--decoder", str(args.decoder), "--cache", args.cache]
    tok = ["--tokenizer", str(args.tokenizer)] if args.tokenizer else []
    runs = {
        "lane graphs, own stream, tokenizer": tok,
        "lane graphs, default stream, tokenizer": [*tok, "--no-lane-stream"],
        "lane eager, own stream, tokenizer": [*tok, "--no-lane-graphs"],
        "lane graphs, own stream, no tokenizer": [],
    }
    for name, extra in runs.items():
        try:
            done = subprocess.run(
                [*base, *extra], check=False, capture_output=True, text=True, timeout=args.variant_timeout
            )
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            err = [ln for ln in done.stderr.splitlines() if "Error" in ln][-2:]
            print(name, "rc", done.returncode, lines[-1] if lines else "", err, flush=True)
        except subprocess.TimeoutExpired:
            print(name, "timed out", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decoder", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--cache", default=tempfile.mkdtemp())
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=260)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-lane", dest="lane", action="store_false")
    parser.add_argument("--no-lane-graphs", dest="lane_graphs", action="store_false")
    parser.add_argument("--no-lane-stream", dest="lane_stream", action="store_false")
    parser.add_argument("--variants", action="store_true", help="run the bisection variants, one process each")
    parser.add_argument("--variant-timeout", type=float, default=120)
    args = parser.parse_args()
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(args.cache) / "triton"))
    if args.variants:
        variants(args)
        return
    result = asyncio.run(run(args))
    print(json.dumps(result))
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
