"""The collector's pauses (serving/gc_heap.py): the startup heap frozen and thawed, each collection timed."""

from __future__ import annotations

import contextlib
import gc
import threading

from glm4voice_api.serving.gc_heap import LONG_PAUSE_S, GcPauses, freeze_startup_heap, unfreeze_heap


def test_freezing_moves_what_is_alive_out_of_reach_and_unfreezing_brings_it_back() -> None:
    kept = [[i] for i in range(10_000)]  # tracked containers, as a loaded server holds
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert kept[-1] == [9_999]  # frozen objects are untouched, only skipped by collections
    finally:
        unfreeze_heap()
    assert gc.get_freeze_count() == 0


def test_every_collection_is_timed_per_generation_until_stopped() -> None:
    pauses = GcPauses()
    pauses.start()
    pauses.start()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.stop()
    assert pauses.collections == 2
    (b0, s0), (b2, s2) = pauses.histogram(0), pauses.histogram(2)
    assert b0[-1] == ("+Inf", 1) and b2[-1] == ("+Inf", 1) and pauses.histogram(1)[0][-1] == ("+Inf", 0)
    assert abs(pauses.seconds - s0 - s2) < 1e-9 and pauses.longest_s == max(s0, s2)
    assert pauses.long_pauses == (s0 >= LONG_PAUSE_S) + (s2 >= LONG_PAUSE_S)
    assert [n for _, n in b2] == sorted(n for _, n in b2)  # cumulative
    gc.collect()
    assert pauses.collections == 2  # stopped: no longer called


def test_the_callback_takes_no_lock_so_a_collection_inside_a_scrape_cannot_deadlock() -> None:
    """A collection may start on a thread that holds a metrics lock (a /metrics scrape copying children): the
    callback must not take one. Here the collection runs inside the registry's scrape, on the same thread."""
    from prometheus_client import generate_latest

    from glm4voice_api.serving.metrics import Metrics

    metrics = Metrics()
    locks = [c._lock for c in list(metrics.registry._collector_to_names) if hasattr(c, "_lock")]
    assert locks  # the metrics' own plain (non-reentrant) locks

    def collect_holding_every_metric_lock() -> None:
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            gc.collect(0)  # would hang here if the callback touched a metric

    metrics.gc_pauses.start()
    try:
        worker = threading.Thread(target=collect_holding_every_metric_lock, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the GC callback blocked on a metrics lock"
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.gc_pauses.stop()
    assert 'glm4voice_gc_pause_seconds_count{generation="0"} 1.0' in text
    assert 'glm4voice_gc_pause_seconds_bucket{generation="2",le="+Inf"} 0.0' in text


def test_a_callback_registered_mid_collection_skips_that_one() -> None:
    pauses = GcPauses()
    pauses._callback("stop", {"generation": 2})  # no start seen: nothing to time
    assert pauses.collections == 0
