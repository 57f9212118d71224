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


async def run(decoder_path: Path, streams: int, tokens: int) -> dict:
    import numpy as np

    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline.runtime import _build_scheduler

    settings = Settings(cache_dir=Path(tempfile.mkdtemp()))
    start = time.perf_counter()
    scheduler = await asyncio.to_thread(_build_scheduler, settings, decoder_path, "cuda")
    built_s = time.perf_counter() - start
    rng = np.random.default_rng(0)

    async def one(i: int) -> int:
        await asyncio.sleep(i / streams)  # starts spread over 1 s, as the suite's
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
    ok = scheduler.failures == 0 and len(set(lengths)) == 1 and lengths[0] > 0 and lane is not None and lane.passes
    out["ok"] = bool(ok)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decoder", type=Path, required=True)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=260)
    args = parser.parse_args()
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp())
    result = asyncio.run(run(args.decoder, args.streams, args.tokens))
    print(json.dumps(result))
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
