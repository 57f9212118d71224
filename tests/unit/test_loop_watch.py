"""The event-loop watch: a blocked loop is measured (lag) and reported once with the stack that blocked it."""

from __future__ import annotations

import asyncio
import time

import pytest

from glm4voice_api.serving.loop_watch import LoopWatch


def _hold_the_loop_without_yielding(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking store call or model work on the loop thread does


async def _run(watch: LoopWatch, block_s: float) -> None:
    watch.start()
    try:
        await asyncio.sleep(0.3)  # a few normal beats
        _hold_the_loop_without_yielding(block_s)
        await asyncio.sleep(0.3)  # the beat after the stall records its lag
    finally:
        watch.stop()


def test_a_blocked_loop_is_reported_once_with_the_stack_that_held_it(caplog: pytest.LogCaptureFixture) -> None:
    lags: list[float] = []
    stalls: list[int] = []
    watch = LoopWatch(stall_s=0.5, interval_s=0.05, observe_lag=lags.append, count_stall=lambda: stalls.append(1))
    with caplog.at_level("WARNING", logger="glm4voice_api.serving.loop_watch"):
        asyncio.run(_run(watch, block_s=2.0))
    reports = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    held = [m for m in reports if "_hold_the_loop_without_yielding" in m]
    # One report for the block, not one per watchdog tick (a loaded machine may add a report of its own).
    assert len(held) == 1 and len(stalls) == len(reports)
    assert max(lags) >= 1.5  # the beat that was due during the block woke ~2 s late
    assert len(lags) >= 5 and sorted(lags)[len(lags) // 2] < 0.5  # most others were not


def test_a_free_loop_reports_nothing_and_off_starts_no_thread(caplog: pytest.LogCaptureFixture) -> None:
    stalls: list[int] = []
    watch = LoopWatch(stall_s=0, interval_s=0.05, count_stall=lambda: stalls.append(1))
    with caplog.at_level("WARNING", logger="glm4voice_api.serving.loop_watch"):
        asyncio.run(_run(watch, block_s=0.0))
    assert watch._thread is None and not stalls and "event loop blocked" not in caplog.text
