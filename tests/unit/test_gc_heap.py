"""The collector's pauses (serving/gc_heap.py): the startup heap frozen and thawed, each collection timed."""

from __future__ import annotations

import gc

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
    seen: list[tuple[str, float]] = []
    pauses = GcPauses(lambda generation, s: seen.append((generation, s)))
    pauses.start()
    pauses.start()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.stop()
    assert [g for g, _ in seen] == ["0", "2"] and pauses.collections == 2
    assert abs(pauses.seconds - sum(s for _, s in seen)) < 1e-9 and pauses.longest_s == max(s for _, s in seen)
    assert pauses.long_pauses == sum(s >= LONG_PAUSE_S for _, s in seen)
    gc.collect()
    assert pauses.collections == 2  # stopped: no longer called


def test_a_callback_registered_mid_collection_skips_that_one() -> None:
    pauses = GcPauses()
    pauses._callback("stop", {"generation": 2})  # no start seen: nothing to time
    assert pauses.collections == 0
