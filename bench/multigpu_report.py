"""Report one GPU suite run's 1-GPU defaults vs its tensor- or data-parallel config in bench/results/multigpu.json.

    python -m bench.multigpu_report --suite $OUT/gpu_suite.json --mode tp --gpus 2 --out $OUT/multigpu.json

Written by `bash bench/gpu_run.sh multigpu tp|dp` on a machine with two or more GPUs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def headline(run: dict) -> dict:
    """A run of gpu_suite.json (`defaults` or one of `configs`)."""
    at32 = next((lv for lv in run["levels"] if lv["concurrency"] == 32), None)
    return {
        "realtime_streams": run["realtime_streams"],
        "playable_p50_ms_at_32": at32["playable_ms"]["p50"] if at32 else None,
        "playable_p99_ms_at_32": at32["playable_ms"]["p99"] if at32 else None,
        "tokens_per_s_by_concurrency": {lv["concurrency"]: lv["tokens_per_s"] for lv in run["levels"]},
        "settings": run["settings"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", type=Path, required=True, help="gpu_suite.json with one --config: the multi-GPU run")
    p.add_argument("--mode", choices=["tp", "dp"], required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = json.loads(args.suite.read_text())
    one, multi = result["defaults"], result["configs"][0]
    report = {
        "gpu": result["latest"]["gpu"],
        "date": result["latest"]["date"],
        "gpus": args.gpus,
        "mode": args.mode,
        **{k: v for k, v in headline(multi).items() if k != "settings"},
        "one_gpu": headline(one),
        "settings": headline(multi)["settings"],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("gpus", "mode", "realtime_streams", "playable_p50_ms_at_32")}))


if __name__ == "__main__":
    main()
