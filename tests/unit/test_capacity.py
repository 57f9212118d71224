"""Capacity control: the admission limit follows what the server measures (made-up readings, no server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from glm4voice_api.serving.admission import AdmissionQueue
from glm4voice_api.serving.capacity import (
    REALTIME_TOKENS_PER_S,
    CapacityController,
    CapacityMemory,
    CapacitySignals,
    initial_limit,
    run_controller,
)


def old_policy(**fields) -> CapacityController:
    """The mechanism under the policy of until 2026-12-05 (+25% a step, a step a second, cut to 90%, near misses only
    holding growth), on which these tests were written; each test overrides what it is about. The default policy
    has its own test below."""
    return CapacityController(**({"step": 0.25, "backoff": 0.9, "settle_s": 0.0, "near_miss_cut": 0} | fields))


class Feed:
    """Cumulative counters advanced one second at a time."""

    def __init__(self) -> None:
        self.at, self.underruns, self.near, self.tokens, self.start = 0.0, 0, 0, 0, 0

    def tick(
        self, *, tok_per_stream: float, active: int, queued: int = 0, underruns: int = 0, near: int = 0, start: int = 0
    ):
        self.at += 1.0
        self.underruns += underruns
        self.near += near
        self.start += start
        self.tokens += int(tok_per_stream * active)
        return CapacitySignals(self.at, self.underruns, self.near, self.tokens, active, active, queued, self.start)


def test_grows_while_healthy_and_full_then_holds_on_near_misses_and_thin_supply() -> None:
    c = old_policy(ceiling=256, initial=16)
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
    c = old_policy(ceiling=256, initial=64, cooldown_s=3)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=64))
    assert c.update(feed.tick(tok_per_stream=60, active=60, underruns=2)) == 57  # 64 (the recent peak) - 10%
    for _ in range(2):  # cooling down: no growth although healthy and full
        assert c.update(feed.tick(tok_per_stream=60, active=57, queued=9)) == 57
    assert c.update(feed.tick(tok_per_stream=60, active=57, queued=9)) == 58  # past 80% of the knee: one more


def test_cut_goes_below_the_level_that_ran_dry_and_can_be_deeper() -> None:
    c = old_policy(ceiling=256, initial=2, floor=1)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=2))
    assert c.update(feed.tick(tok_per_stream=60, active=2, underruns=1)) == 1  # 90% of 2 rounds down to 1
    c = old_policy(ceiling=256, initial=50, backoff=0.7, cooldown_s=2, probe_s=3)
    c.update(feed.tick(tok_per_stream=60, active=50))
    assert c.update(feed.tick(tok_per_stream=60, active=50, underruns=1)) == 35  # 70% of 50
    c.update(feed.tick(tok_per_stream=60, active=35, queued=5))  # cooling down
    # At the cut's level (below 80% of the knee): one stream per probe, not a fast step back up to 40.
    assert [c.update(feed.tick(tok_per_stream=60, active=c.limit, queued=5)) for _ in range(4)] == [36, 36, 36, 37]


def test_bounds_hold() -> None:
    c = old_policy(ceiling=8, initial=8, floor=2)
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
    c = old_policy(ceiling=256, initial=40, cooldown_s=5)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=40))
    c.update(feed.tick(tok_per_stream=60, active=30))
    assert c.update(feed.tick(tok_per_stream=60, active=12, underruns=3)) == 36  # 40 (the recent peak) - 10%
    assert c.knee == 40
    for _ in range(4):  # the streams admitted before the cut keep running dry for a while: no further cuts
        assert c.update(feed.tick(tok_per_stream=60, active=12, underruns=2)) == 36


def test_grows_fast_up_to_80_percent_of_the_knee_then_one_stream_per_probe() -> None:
    c = old_policy(ceiling=256, initial=30, cooldown_s=2, probe_s=3)
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


def test_settle_holds_each_fast_step_until_its_streams_got_past_their_start() -> None:
    def limits(c: CapacityController) -> list[int]:
        feed = Feed()
        c.update(feed.tick(tok_per_stream=80, active=16))
        return [c.update(feed.tick(tok_per_stream=80, active=c.limit, queued=48)) for _ in range(7)]

    assert limits(old_policy(ceiling=256, initial=16)) == [20, 25, 32, 40, 50, 63, 79]  # a step a second
    assert limits(old_policy(ceiling=256, initial=16, settle_s=3)) == [20, 20, 20, 25, 25, 25, 32]


def test_a_gap_while_growth_waits_still_cuts() -> None:
    """The wait after a probe or a settling step holds growth only: the gaps it waits for must cut (they were once
    dropped while it lasted, and the limit went on probing past the knee)."""
    for controller in (
        old_policy(ceiling=256, initial=16, settle_s=3),
        old_policy(ceiling=256, initial=16),
    ):
        feed = Feed()
        controller.update(feed.tick(tok_per_stream=80, active=16))
        assert controller.update(feed.tick(tok_per_stream=80, active=16, queued=9)) == 20
        controller.knee = 21  # near the knee: the next step is a probe, then a 5 s wait
        assert controller.update(feed.tick(tok_per_stream=80, active=20, queued=9)) in (20, 21)
        assert controller.update(feed.tick(tok_per_stream=80, active=21, queued=9, underruns=1)) < 20
        assert controller.reason == "underrun"


def test_near_misses_cut_only_when_asked_and_count_over_the_window() -> None:
    """near_miss_cut (off under the old policy: near misses hold growth only) cuts as an underrun does once that many near
    misses came within the last cooldown_s, from the recent peak, with the same hold against echoes."""
    off = old_policy(ceiling=256, initial=30, cooldown_s=3)
    feed = Feed()
    off.update(feed.tick(tok_per_stream=60, active=30))
    for _ in range(4):
        assert off.update(feed.tick(tok_per_stream=60, active=30, queued=5, near=3)) == 30
    assert off.reason == "near miss" and off.knee is None

    c = old_policy(ceiling=256, initial=30, cooldown_s=3, backoff=0.7, near_miss_cut=2)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=30))
    assert c.update(feed.tick(tok_per_stream=60, active=30, queued=5, near=1)) == 30  # one: holds growth
    assert c.reason == "near miss"
    assert c.update(feed.tick(tok_per_stream=60, active=30, queued=5, near=1)) == 21  # two within 3 s: 70% of 30
    assert c.reason == "near misses" and c.knee == 30
    for _ in range(2):  # the hold: more near misses of the same overload do not cut again
        assert c.update(feed.tick(tok_per_stream=60, active=28, queued=5, near=1)) == 21


def test_near_misses_spread_thinner_than_the_window_do_not_cut() -> None:
    c = old_policy(ceiling=256, initial=30, cooldown_s=2, near_miss_cut=2)
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=30))
    for i in range(9):  # one near miss every 3 s: never two within 2 s
        c.update(feed.tick(tok_per_stream=60, active=c.limit, queued=5, near=int(i % 3 == 0)))
    assert c.knee is None and c.limit > 30


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


def test_a_remembered_knee_sets_where_a_restarted_controller_starts() -> None:
    c = old_policy(ceiling=256, initial=64)
    c.restore(40)
    assert c.knee == 40 and c.limit == 36 and c.reason == "remembered knee"  # where a cut at 40 would have left it
    feed = Feed()
    c.update(feed.tick(tok_per_stream=60, active=36))
    assert c.update(feed.tick(tok_per_stream=60, active=36, queued=4)) == 37  # probing, not a fast step past 32
    high = old_policy(ceiling=256, initial=64)
    high.restore(200)  # a knee above the initial guess: start from the guess and grow as usual
    assert high.limit == 64 and high.knee == 200


def test_capacity_memory_keeps_one_knee_per_key_and_survives_bad_files(tmp_path, caplog) -> None:
    path = tmp_path / "cache" / "capacity.json"
    here, other = CapacityMemory(path, "h200-defaults"), CapacityMemory(path, "h100-fp8")
    assert here.load() is None  # no file yet: the initial limit
    here.save(40)
    other.save(25)
    here.save(36)
    assert here.load() == 36 and other.load() == 25
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, replaced at once
    path.write_text("{not json")
    assert here.load() is None and "unreadable" in caplog.text
    here.save(30)  # a broken file is replaced by a good one
    assert here.load() == 30 and other.load() is None
    path.write_text(json.dumps({"h200-defaults": {"knee": "many"}}))
    assert here.load() is None
    blocked = CapacityMemory(tmp_path / "a-file" / "capacity.json", "k")
    (tmp_path / "a-file").write_text("")  # its folder cannot be created: logged, never raised
    blocked.save(10)
    assert "not written" in caplog.text


def test_the_controller_loop_saves_each_new_knee(tmp_path) -> None:
    memory = CapacityMemory(tmp_path / "capacity.json", "k")
    c = old_policy(ceiling=256, initial=20, cooldown_s=0.05)
    feed = Feed()
    readings = iter(
        [feed.tick(tok_per_stream=60, active=20), feed.tick(tok_per_stream=60, active=20, underruns=2)]
        + [feed.tick(tok_per_stream=60, active=18) for _ in range(200)]
    )
    limits: list[int] = []

    async def run() -> None:
        task = asyncio.create_task(run_controller(c, lambda: next(readings), limits.append, 0.001, memory))
        for _ in range(500):
            await asyncio.sleep(0.002)
            if memory.load() is not None:
                break
        task.cancel()

    asyncio.run(run())
    assert memory.load() == 20 and c.knee == 20 and 18 in limits


def test_the_memory_key_changes_with_anything_that_changes_capacity() -> None:
    from types import SimpleNamespace

    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline.runtime import CheckpointFolders, capacity_key

    paths = CheckpointFolders(Path("/m/glm-4-voice-9b"), Path("/m/tok"), Path("/m/dec"))

    def key(paths=paths, **settings) -> str:
        return capacity_key(SimpleNamespace(settings=Settings(**settings), paths=paths))

    base = key()
    assert base == key() and len(base) == 16  # stable for one configuration
    assert key(engine={"max_num_seqs": 64}) != base
    assert key(speech_decoder={"ode_steps": 10}) != base
    assert key(speech_tokenizer={"max_batch": 4}) != base
    assert key(paths=CheckpointFolders(Path("/other/llm"), Path("/m/tok"), Path("/m/dec"))) != base
    assert key(admission={"max_queue_wait_s": 3}) == base  # how long newcomers wait changes nothing it can serve


def test_the_memory_key_names_the_gpu_through_nvml_not_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the audio models in vLLM's process the API process holds no CUDA context: naming the GPU for the key
    must not make one (torch's query initialises CUDA), so it asks NVML."""
    from types import SimpleNamespace

    import torch
    from vllm.third_party import pynvml

    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline import runtime

    def no_cuda(*_: object) -> str:
        raise AssertionError("CUDA initialised in the API process")

    for name, fake in {"nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
                       "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}",
                       "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3" if h == "handle0" else b"?"}.items():  # fmt: skip
        monkeypatch.setattr(pynvml, name, fake)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    rt = SimpleNamespace(settings=Settings(), paths=runtime.CheckpointFolders(Path("/l"), Path("/t"), Path("/d")))
    cpu_key = runtime.capacity_key(rt)
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    assert runtime.capacity_key(rt) != cpu_key


def test_the_default_policy_grows_a_stream_per_settle_and_cuts_deep_on_one_near_miss() -> None:
    """The measured default (H100, 2026-12-05; capacity.py): from an eighth of the batch size, one stream per 3 s
    while full, and a single near miss cuts to 70% of the recent peak as an underrun does."""
    c = CapacityController(ceiling=256, initial=initial_limit(256))
    assert c.limit == 32
    feed = Feed()
    c.update(feed.tick(tok_per_stream=80, active=32))
    grown = [c.update(feed.tick(tok_per_stream=80, active=c.limit, queued=20)) for _ in range(7)]
    assert grown == [33, 33, 33, 34, 34, 34, 35]
    assert c.update(feed.tick(tok_per_stream=80, active=35, queued=20, near=1)) == 24  # 70% of 35
    assert c.reason == "near misses" and c.knee == 35
    assert initial_limit(8) == 1 and initial_limit(1) == 1


def test_near_misses_during_a_cuts_hold_do_not_cut_again_after_it() -> None:
    """The hold after a cut ends while near misses it saw are still inside the `cooldown_s` window: they are that
    overload's echo, and cutting on them would lower the knee (and the remembered one) a second time."""
    c = CapacityController(ceiling=256, initial=initial_limit(256))
    feed = Feed()
    c.update(feed.tick(tok_per_stream=80, active=32))
    assert c.update(feed.tick(tok_per_stream=80, active=36, queued=10, near=1)) == 22 and c.knee == 32
    limits = [c.update(feed.tick(tok_per_stream=80, active=30, queued=10, near=n)) for n in (0, 1, 0, 0, 0, 0)]
    assert min(limits) == 22 and c.knee == 32  # no second cut from the echo
    assert c.update(feed.tick(tok_per_stream=80, active=23, queued=10, near=1)) == 16  # a new one after: cuts
    assert c.knee == 23


def test_underruns_in_a_streams_first_seconds_hold_growth_but_never_cut() -> None:
    """A cold server's overload (H100, 2026-12-06) grew its limit 37 -> 43 while streams in their first 2 s ran dry,
    before the first settled gap cut it: such underruns now hold growth for `start_hold_s` (a burst's start at a
    real-time load makes some too, so they never cut)."""

    def limits(c: CapacityController) -> list[int]:
        feed = Feed()
        c.update(feed.tick(tok_per_stream=80, active=32))
        out = []
        for second in range(9):
            start = 2 if second in (0, 4) else 0
            out.append(c.update(feed.tick(tok_per_stream=80, active=c.limit, queued=20, start=start)))
        return out

    assert limits(CapacityController(ceiling=256, initial=32, start_hold_s=0)) == [33, 33, 33, 34, 34, 34, 35, 35, 35]
    held = CapacityController(ceiling=256, initial=32)
    assert limits(held) == [32, 32, 32, 33, 33, 33, 33, 34, 34]
    assert held.knee is None and held.reason == "demand"  # no cut


def test_starting_underruns_at_a_sustained_rate_cut_when_asked() -> None:
    """With `start_cut`, starting underruns in that many readings within `start_window_s` cut as a settled underrun
    does; a burst's few (one reading here) never do, and those during the cut's hold are its echo."""

    def run(c: CapacityController, starts: set[int], seconds: int = 30) -> list[int]:
        feed = Feed()
        c.update(feed.tick(tok_per_stream=80, active=c.limit))
        return [
            c.update(feed.tick(tok_per_stream=80, active=c.limit, queued=20, start=2 if t in starts else 0))
            for t in range(seconds)
        ]

    sustained = {4, 7, 9, 12, 15, 18, 21, 24, 27}  # one reading in three (the H100's safe loads had up to one in two)
    default = CapacityController(ceiling=256, initial=34)
    assert max(run(default, sustained)) == 36 and default.knee is None  # grows past it: the regime it is for

    cutting = CapacityController(ceiling=256, initial=34, start_cut=4, start_window_s=20)
    limits = run(cutting, sustained, seconds=20)
    assert limits[11] == 36 and limits[12] == 25 and cutting.knee == 36  # the 4th reading cuts to 70% of the peak
    assert min(limits[12:]) == 25  # the readings during its hold are the same overload's echo: no second cut
    again = CapacityController(ceiling=256, initial=34, start_cut=4, start_window_s=20)
    assert run(again, sustained)[-1] == 17  # four more readings after the hold: the overload goes on, cut again

    burst = CapacityController(ceiling=256, initial=34, start_cut=4, start_window_s=20)
    assert min(run(burst, {3})) >= 34 and burst.knee is None  # a 1-s burst's starting underruns never cut
