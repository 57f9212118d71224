"""What freezing the startup heap does to a full garbage collection in the real server process.

Starts the app in this process on the given settings (the environment's GLM4VOICE_*, as `glm4voice-api serve`;
the built-in default is the tiny random-weight set on the CPU engine), lets its lifespan run (models, engine,
warm-up, then `freeze_startup_heap`), serves a few spoken replies, and times `gc.collect()` as the server runs it
(startup frozen) and with the heap thawed (as before 2026-12-05). Every stream waits while a collection runs: the
collector holds the GIL. A GPU server's heap is larger (compiled decoder blocks, dynamo's guards, CUDA graphs), so
run it there for that figure:

    python -m bench.gc_probe --out gc_probe.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path


def _collect_ms(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append(round(1000 * (time.perf_counter() - started), 2))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--replies", type=int, default=2, help="spoken replies served before measuring")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    from fastapi.testclient import TestClient

    from glm4voice_api.app import create_app
    from glm4voice_api.config import Settings

    with TestClient(create_app(Settings())) as client:
        for _ in range(args.replies):
            got = client.post(
                "/v1/chat/completions",
                json={
                    "model": "glm-4-voice-9b",
                    "modalities": ["text", "audio"],
                    "audio": {"voice": "alloy", "format": "wav"},
                    "messages": [{"role": "user", "content": "Say something."}],
                    "max_tokens": 80,
                },
            )
            got.raise_for_status()
        frozen_objects = gc.get_freeze_count()
        frozen = _collect_ms(args.rounds)
        gc.unfreeze()
        tracked = len(gc.get_objects())
        thawed = _collect_ms(args.rounds)
        gc.freeze()  # as the lifespan left it, for its shutdown
    result = {
        "frozen_objects": frozen_objects,
        "tracked_objects_thawed": tracked,
        "full_collection_ms_frozen": frozen,
        "full_collection_ms_thawed": thawed,
        "ratio_median": round(statistics.median(thawed) / max(statistics.median(frozen), 1e-3), 1),
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
