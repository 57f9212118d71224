"""What the GPU checks of the bucketed graph runners share (bench/check_hift_graphs.py, bench/check_flow_front_graphs.py):
the common arguments, timing, the per-shape row's capture and memory figures, `--warmup-all` and the report file.

A runner here is a `graph_buckets.BucketGraphs` (`captures`, `capture_seconds`, `warmup`, `use_graphs`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_common_args(p: argparse.ArgumentParser, presets: Iterable[str]) -> None:
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="full", choices=sorted(presets))
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)


def model_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    return DTYPES[args.dtype] if device.type == "cuda" else torch.float32  # bf16 is slow on a CPU


def ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, iters: int) -> float:
    fn()  # warm-up (allocator, algorithms)
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def first_pass(runner: Any, device: torch.device, fn: Callable[[], Any]) -> tuple[Any, int, float]:
    """fn() (a shape's first pass through the runner, capturing its bucket) with the peak memory reset before it:
    (its result, the captures it made, their seconds)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    captures, capture_s = runner.captures, runner.capture_seconds
    out = fn()
    return out, runner.captures - captures, runner.capture_seconds - capture_s


def finish_row(
    row: dict[str, Any], device: torch.device, eager_ms: float, graph_ms: float, captures: int, capture_s: float
) -> dict[str, Any]:
    """The shape's row with its times, captures and peak memory (allocated since `first_pass`), printed."""
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finite = row.pop("finite")
    row.update(
        eager_ms=eager_ms,
        graph_ms=graph_ms,
        speedup=round(eager_ms / graph_ms, 2) if graph_ms else None,
        captures=captures,
        capture_s=round(capture_s, 3),
        peak_gib=None if peak is None else round(peak, 3),
        finite=finite,
    )
    print(json.dumps({k: v for k, v in row.items() if k != "lengths"}), flush=True)
    return row


def warmup_all(runner: Any, device: torch.device, max_batch: int, limit: str, max_n: int) -> dict[str, Any]:
    """`runner.warmup(max_batch, max_n)` as the server's warm-up would run it: graphs, time, memory."""
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    captures, seconds = runner.captures, runner.capture_seconds
    start = time.perf_counter()
    graphs = runner.warmup(max_batch, max_n)
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return {
        "max_batch": max_batch,
        limit: max_n,
        "graphs": graphs,
        "captured_now": runner.captures - captures,
        "capture_s": round(runner.capture_seconds - seconds, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "allocated_gib_added": round((after - before) / 2**30, 3),
        "reserved_gib": round(torch.cuda.memory_reserved(device) / 2**30, 3) if device.type == "cuda" else None,
    }


def report_head(name: str, args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    return {
        "benchmark": name,
        "preset": args.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def run_report(
    report: dict[str, Any],
    out: Path,
    shapes: Iterable[Callable[[], dict[str, Any]]],
    runner: Any,
    warmup: Callable[[], dict[str, Any]] | None,
) -> dict[str, Any]:
    """Each shape's row into report["shapes"] (the file rewritten after each: a crash keeps the rows so far), then
    `--warmup-all`'s figures and the runner's capture totals."""

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")

    report["shapes"] = []
    for shape in shapes:
        report["shapes"].append(shape())
        save()
    if warmup is not None:
        report["warmup_all"] = warmup()
        print(json.dumps(report["warmup_all"]), flush=True)
    report["captures"], report["capture_s"] = runner.captures, round(runner.capture_seconds, 2)
    save()
    return report
