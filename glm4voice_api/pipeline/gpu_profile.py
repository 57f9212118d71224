"""What the GPU ran during a window, by CUDA stream: the benchmarks' burst profile (bench/gpu_server.py's
`/bench/profile_gpu`), taken in the process that holds the model (the decoder host, or this process).

Why: at 32 streams a reply's first audio splits into the LLM's token supply, the wait for a decoder pass and the pass
(bench/results/GPU.md), but the split says how long each waited, not why: whether the decoder's kernels (a stream of
their own, high priority) run beside the LLM's or between them, how much of the window each stream keeps the GPU
busy, and which kernels take that time. CUPTI records every kernel of the process, whichever thread launched it, so
one window shows the LLM, the decoder and the speech tokenizer together. The tracing itself adds a few microseconds
per launch: a profiled window is a little slower than an unprofiled one.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["profile_window", "summarize_trace"]

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
"""Chrome-trace categories of device work (Kineto's names)."""


def profile_window(seconds: float, top: int = 12) -> dict:
    """Record the device's work for `seconds` and summarize it by stream; {"error": ...} when it cannot (no CUDA, no
    CUPTI): a profile never fails the caller."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if not torch.cuda.is_available():
            return {"error": "no CUDA device: nothing to profile"}
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            time.sleep(seconds)
        return summarize_trace(_device_trace(prof), seconds, top)
    except Exception as exc:  # reported to the benchmark, never raised into a server
        logger.exception("GPU profile failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _device_trace(prof: Any) -> dict:
    """The profile's device events in the Chrome trace's form, read from Kineto's events directly: exporting and
    parsing a 2 s window's trace (tens of MB) would hold this process's GIL, which the LLM's step loop shares, for
    seconds; the export stays the fallback where a torch lacks these accessors."""
    try:
        events = [
            {
                "ph": "X",
                "cat": e.activity_type(),
                "name": e.name(),
                "ts": e.start_ns() / 1000,
                "dur": e.duration_ns() / 1000,
                "args": {"device": e.device_index(), "stream": e.device_resource_id()},
            }
            for e in prof.profiler.kineto_results.events()
            if e.activity_type() in GPU_CATEGORIES
        ]
        return {"traceEvents": events}
    except AttributeError:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            return json.loads(path.read_text())


def summarize_trace(trace: dict, seconds: float, top: int = 12) -> dict:
    """A Chrome trace's device events -> per stream: busy ms, kernels, the top kernels by time; and across streams:
    ms with any stream busy and ms with two or more busy at once (the overlap the decoder's own stream is for)."""
    events = [
        e
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES and isinstance(e.get("dur"), int | float)
    ]
    streams: dict[str, dict[str, Any]] = {}
    intervals: list[tuple[float, float, str]] = []
    for e in events:
        args = e.get("args") or {}
        key = f"{args.get('device', 0)}:{args.get('stream', 'unknown')}"
        entry = streams.setdefault(key, {"busy_us": 0.0, "count": 0, "names": {}})
        dur = float(e["dur"])
        entry["busy_us"] += dur
        entry["count"] += 1
        name = str(e.get("name", "?"))[:100]
        entry["names"][name] = entry["names"].get(name, 0.0) + dur
        intervals.append((float(e["ts"]), float(e["ts"]) + dur, key))
    any_us, overlap_us = _coverage(intervals)
    window_ms = 1000.0 * seconds
    return {
        "window_ms": round(window_ms, 1),
        "kernels": len(events),
        "any_busy_ms": round(any_us / 1000, 1),
        "overlap_ms": round(overlap_us / 1000, 1),
        "streams": {
            key: {
                "busy_ms": round(entry["busy_us"] / 1000, 1),
                "busy_fraction": round(entry["busy_us"] / 1000 / window_ms, 3) if window_ms else None,
                "kernels": entry["count"],
                "top": [
                    {"name": name, "ms": round(us / 1000, 2)}
                    for name, us in sorted(entry["names"].items(), key=lambda kv: -kv[1])[:top]
                ],
            }
            for key, entry in sorted(streams.items(), key=lambda kv: -kv[1]["busy_us"])
        },
    }


def _coverage(intervals: list[tuple[float, float, str]]) -> tuple[float, float]:
    """(time with any interval open, time with intervals of two or more streams open), by a sweep over the ends.
    Kernels of one stream run one after another, so an overlap is always between streams."""
    edges = sorted([(start, 1, key) for start, _, key in intervals] + [(end, -1, key) for _, end, key in intervals])
    open_by: dict[str, int] = {}
    any_us = overlap_us = 0.0
    last = None
    for at, step, key in edges:
        if last is not None:
            busy = sum(1 for n in open_by.values() if n > 0)
            any_us += (at - last) if busy >= 1 else 0.0
            overlap_us += (at - last) if busy >= 2 else 0.0
        open_by[key] = open_by.get(key, 0) + step
        last = at
    return any_us, overlap_us
