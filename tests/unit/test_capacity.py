"""Capacity control: the admission limit follows what the server measures (made-up readings, no server)."""

from __future__ import annotations

import asyncio

from glm4voice_api.serving.admission import AdmissionQueue
from glm4voice_api.serving.capacity import REALTIME_TOKENS_PER_S, CapacityController, CapacitySignals


class Feed:
    """Cumulative counters advanced one second at a time."""

    def __init__(self) -> None:
        self.at, self.underruns, self.near, self.tokens = 0.0, 0, 0, 0

    def tick(self, *, tok_per_stream: float, active: int, queued: int = 0, underruns: int = 0, near: int = 0):
        self.at += 1.0
        self.underruns += underruns
        self.near += near
        self.tokens += int(tok_per_stream * active)
        return CapacitySignals(self.at, self.underruns, self.near, self.tokens, active, active, queued)


def test_grows_while_healthy_and_full_then_holds_on_near_misses_and_thin_supply() -> None:
    c = CapacityController(ceiling=256, initial=16)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=80, active=16))
    assert c.update(feed.tick(tok_per_stream=80, active=16, queued=10)) == 20  # +25%
    assert c.update(feed.tick(tok_per_stream=80, active=20, queued=10)) == 25
    assert c.update(feed.tick(tok_per_stream=80, active=25, queued=10, near=1)) == 25  # a near miss: hold
    assert c.reason == "near miss"
    assert c.update(feed.tick(tok_per_stream=REALTIME_TOKENS_PER_S * 1.2, active=25, queued=5)) == 25
    assert c.reason == "token supply"
    assert c.update(feed.tick(tok_per_stream=80, active=10)) == 25  # not full, nobody waiting: no growth


def test_underrun_cuts_and_holds_off_growth() -> None:
    c = CapacityController(ceiling=256, initial=64, cooldown_s=3)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=64))
    assert c.update(feed.tick(tok_per_stream=60, active=60, underruns=2)) == 57  # 64 (the recent peak) - 10%
    for _ in range(2):  # cooling down: no growth although healthy and full
        assert c.update(feed.tick(tok_per_stream=60, active=57, queued=9)) == 57
    assert c.update(feed.tick(tok_per_stream=60, active=57, queued=9)) == 58  # past 80% of the knee: one more


def test_cut_goes_below_the_level_that_ran_dry_and_can_be_deeper() -> None:
    c = CapacityController(ceiling=256, initial=2, floor=1)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=2))
    assert c.update(feed.tick(tok_per_stream=60, active=2, underruns=1)) == 1  # 90% of 2 rounds down to 1
    c = CapacityController(ceiling=256, initial=50, backoff=0.7, cooldown_s=2, probe_s=3)
    c.update(feed.tick(tok_per_stream=60, active=50))
    assert c.update(feed.tick(tok_per_stream=60, active=50, underruns=1)) == 35  # 70% of 50
    c.update(feed.tick(tok_per_stream=60, active=35, queued=5))  # cooling down
    # At the cut's level (below 80% of the knee): one stream per probe, not a fast step back up to 40.
    assert [c.update(feed.tick(tok_per_stream=60, active=c.limit, queued=5)) for _ in range(4)] == [36, 36, 36, 37]


def test_bounds_hold() -> None:
    c = CapacityController(ceiling=8, initial=8, floor=2)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=8))
    for _ in range(10):
        c.update(feed.tick(tok_per_stream=60, active=0, underruns=1))
    assert c.limit == 2  # never below the floor
    for _ in range(60):
        c.update(feed.tick(tok_per_stream=90, active=c.limit, queued=3))
    assert c.limit == 8  # never above the ceiling (the engine's batch size)


def test_one_cut_per_overload_from_the_recent_peak() -> None:
    """Gaps are reported seconds after the load that caused them: the cut is from the most streams that ran in the
    last cooldown_s (not from the few still running), and the echo of the same overload does not cut again."""
    c = CapacityController(ceiling=256, initial=40, cooldown_s=5)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=40))
    c.update(feed.tick(tok_per_stream=60, active=30))
    assert c.update(feed.tick(tok_per_stream=60, active=12, underruns=3)) == 36  # 40 (the recent peak) - 10%
    assert c.knee == 40
    for _ in range(4):  # the streams admitted before the cut keep running dry for a while: no further cuts
        assert c.update(feed.tick(tok_per_stream=60, active=12, underruns=2)) == 36


def test_grows_fast_up_to_80_percent_of_the_knee_then_one_stream_per_probe() -> None:
    c = CapacityController(ceiling=256, initial=30, cooldown_s=2, probe_s=3)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=30))
    assert c.update(feed.tick(tok_per_stream=60, active=30, underruns=1)) == 27  # knee 30
    c.limit = 10  # say the load fell away and came back
    assert c.update(feed.tick(tok_per_stream=60, active=10, queued=5)) == 10  # still cooling down
    limits = [c.update(feed.tick(tok_per_stream=60, active=c.limit, queued=5)) for _ in range(10)]
    # +25% while below 24 (80% of the knee), then +1 every 3 s (no overshoot past the knee in one burst)
    assert limits[:3] == [13, 17, 22]
    assert limits[3] == 24
    assert limits[4:] == [25, 25, 25, 26, 26, 26]


def test_queue_follows_a_new_limit() -> None:
    async def run() -> None:
        q = AdmissionQueue(1, max_queued=5, max_wait_s=5)
        await q.acquire()
        waiters = [asyncio.ensure_future(q.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        assert q.queued == 3
        q.set_limit(3)  # two more slots: the first two waiters go in at once
        await asyncio.sleep(0)
        assert [w.done() for w in waiters] == [True, True, False] and q.active == 3
        q.set_limit(1)  # lowered: nothing running stops; released slots vanish until below the limit
        q.release()
        q.release()
        await asyncio.sleep(0)
        assert q.active == 1 and not waiters[2].done()
        q.release()  # now below the limit: the slot goes to the waiter
        await asyncio.sleep(0)
        assert waiters[2].done() and q.active == 1

    asyncio.run(run())
