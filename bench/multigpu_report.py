"""Merge GPU suite results of one run (1 GPU, then tensor- or data-parallel) into bench/results/multigpu.json.

    python -m bench.multigpu_report --one $OUT/one/gpu_suite.json --multi $OUT/tp2/gpu_suite.json --mode tp \\
        --gpus 2 --out $OUT/multigpu.json

Written by `bash bench/gpu_run.sh multigpu tp|dp` on a machine with two or more GPUs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def headline(result: dict) -> dict:
    latest = result["latest"]
    tput = {lv["concurrency"]: lv["tokens_per_s"] for lv in result["ours"]}
    return {
        "realtime_streams": latest["realtime_streams"],
        "ttfa_p50_ms_at_32": latest["ttfa_p50_ms_at_32"],
        "ttfa_p99_ms_at_32": latest["ttfa_p99_ms_at_32"],
        "tokens_per_s_by_concurrency": tput,
        "settings": latest["settings"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", type=Path, required=True)
    p.add_argument("--multi", type=Path, required=True)
    p.add_argument("--mode", choices=["tp", "dp"], required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    one, multi = (json.loads(f.read_text()) for f in (args.one, args.multi))
    report = {
        "gpu": multi["latest"]["gpu"],
        "date": multi["latest"]["date"],
        "gpus": args.gpus,
        "mode": args.mode,
        **{k: v for k, v in headline(multi).items() if k != "settings"},
        "one_gpu": headline(one),
        "settings": headline(multi)["settings"],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("gpus", "mode", "realtime_streams", "ttfa_p50_ms_at_32")}))


if __name__ == "__main__":
    main()
