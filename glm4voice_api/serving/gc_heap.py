"""The garbage collector's pauses: the startup heap frozen once the server is ready, and every collection timed.

Why: CPython's cyclic collector runs with the GIL held, so while it walks the heap nothing else in the process runs:
not the event loop (every stream's sends, health checks), not the decoder's thread, not the engine client's output
handler. An oldest-generation collection walks every tracked object, and this process's heap after startup is
large and permanent: torch and vLLM's modules, dynamo's guard tables and the compiled decoder blocks, the models'
parameters. On an H100 (2026-12-05, `bench/results/GPU.md`) the loop watch caught the event loop stalled 0.59 and
0.74 s inside a collection (dynamo's weakref callbacks) during two overloads, and the admission controller cut its
limit for the underrun that followed. `gc.freeze()` moves everything alive at that point into the permanent
generation, which collections skip; what requests allocate later is collected as before. vLLM's own API server does
the same after its warm-up (`vllm.utils.gc_utils.freeze_gc_heap`); the engine core process already does it for
itself, but this process is ours.

`GcPauses` times each collection through `gc.callbacks` (two clock reads per collection) for `/metrics` and the
benchmark's stats, so a stall that remains is seen and attributed. Its callback touches only its own plain fields,
never a lock: a collection can start on any thread at any call boundary, also while that thread holds a metrics
lock (a scrape copying a histogram's children), and a callback that took that lock would deadlock the thread. The
histogram is built from these fields when `/metrics` is scraped (`metrics.py`).
"""

from __future__ import annotations

import bisect
import gc
import logging
import time

logger = logging.getLogger(__name__)

LONG_PAUSE_S = 0.05
"""A collection this long is counted on its own: longer than a 40 ms audio frame's worth of slack at 50 fps."""


def freeze_startup_heap() -> int:
    """Collect what startup left behind, then move every object still alive out of the collector's reach (see the
    module's docstring). Returns the number of objects frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("gc: %d startup objects frozen (%.2f s)", frozen, time.perf_counter() - started)
    return frozen


def unfreeze_heap() -> None:
    """Back to normal collection (at shutdown: a process that builds several apps, as the tests do, would otherwise
    keep every earlier app's objects for good)."""
    gc.unfreeze()


BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Upper bounds (s) of the pause histogram (`+Inf` beyond)."""


class GcPauses:
    """Time spent inside the cyclic collector, per generation, from `start()` until `stop()`; lock-free (see the
    module's docstring), read by `/metrics` and `/bench/stats`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        """Cumulative seconds in collections."""
        self.collections = 0
        self.long_pauses = 0
        """Collections of at least LONG_PAUSE_S."""
        self.longest_s = 0.0
        self.by_generation: dict[int, list] = {g: [0.0, [0] * (len(BUCKETS) + 1)] for g in range(3)}
        """generation -> [seconds, counts per bucket (not cumulative; the last: beyond BUCKETS)]."""
        self._began: float | None = None

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        if self._began is None:  # registered mid-collection
            return
        took, self._began = time.perf_counter() - self._began, None
        self.seconds += took
        self.collections += 1
        self.longest_s = max(self.longest_s, took)
        if took >= LONG_PAUSE_S:
            self.long_pauses += 1
        entry = self.by_generation.get(int(info.get("generation", 2)))
        if entry is not None:
            entry[0] += took
            entry[1][bisect.bisect_left(BUCKETS, took)] += 1

    def histogram(self, generation: int) -> tuple[list[tuple[str, int]], float]:
        """Prometheus histogram buckets (cumulative, `le` as text, `+Inf` last) and the sum, for one generation."""
        seconds, counts = self.by_generation[generation]
        total, buckets = 0, []
        for bound, count in zip([*(str(b) for b in BUCKETS), "+Inf"], counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets, seconds

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
