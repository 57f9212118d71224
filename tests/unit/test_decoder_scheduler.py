"""DecoderScheduler: batched output equals separate decoding; urgency and length decide each pass; failures stay
local; close frees."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, FixedSchedule, StreamView
from glm4voice_api.pipeline.deadline_hold import DeadlineHold
from glm4voice_api.pipeline.decoder_pool import DecoderPool
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.pass_cost import PassCost
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens
CONFIG = DecoderStreamConfig(schedule=(10, 20), max_prompt_tokens=30)


@pytest.fixture(scope="module")
def decoder():
    return load_speech_decoder(TINY / "speech_decoder")


def test_scheduled_streams_equal_direct_decoding(decoder) -> None:
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 16384, n).tolist() for n in (47, 63, 25)]
    expected = []
    for seq in seqs:
        with decoder.open_stream(config=CONFIG) as stream:
            expected.append(np.concatenate([stream.feed(seq[:30]), stream.feed(seq[30:], final=True)]))

    async def run() -> list[np.ndarray]:
        scheduler = DecoderScheduler(decoder, CONFIG, policy=FixedSchedule(CONFIG.schedule), max_batch=4)
        scheduler.start()
        try:

            async def one(seq: list[int]) -> np.ndarray:
                stream = scheduler.open_stream()
                try:
                    audio = stream.audio()
                    stream.push(seq[:30])  # the fixed schedule makes chunks of 10 and 20 tokens of what is there
                    head = [await anext(audio) for _ in range(2 if len(seq) >= 30 else 1)]
                    stream.push(seq[30:], final=True)
                    return np.concatenate(head + [c async for c in audio])
                finally:
                    stream.close()

            out = await asyncio.gather(*(one(s) for s in seqs))
            await asyncio.sleep(0.2)
            assert scheduler.active_streams() == 0
            assert scheduler.batches < scheduler.chunks  # chunks of several streams shared a pass
            # First audio, split: every stream's first chunk counted once, each part measured.
            assert scheduler.first_chunks == len(seqs)
            assert scheduler.first_supply_s >= 0 and scheduler.first_wait_s >= 0 and scheduler.first_pass_s > 0
            return out
        finally:
            await scheduler.close()

    for got, want in zip(asyncio.run(run()), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_adaptive_streams_decode_everything_in_order(decoder) -> None:
    """Timing-driven chunking: every token is decoded once, in order, the stream ends, and a close frees it."""

    async def run() -> None:
        scheduler = DecoderScheduler(decoder, CONFIG, policy=AdaptiveChunkPolicy(first_chunk=10), max_batch=4)
        scheduler.start()
        try:
            stream = scheduler.open_stream()
            chunks: list[np.ndarray] = []

            async def read() -> None:
                async for c in stream.audio():
                    chunks.append(c)

            reader = asyncio.ensure_future(read())
            for i in range(0, 60, 7):  # tokens trickle in as the LLM makes them
                stream.push(list(range(i, min(i + 7, 60))))
                await asyncio.sleep(0.01)
            stream.push([], final=True)
            await asyncio.wait_for(reader, 60)
            stream.close()
            assert len(chunks) >= 2 and all(len(c) for c in chunks)
            total = sum(len(c) for c in chunks)
            with decoder.open_stream(config=CONFIG) as direct:
                assert total == len(direct.feed(list(range(60)), final=True))  # same length as one offline call
            await asyncio.sleep(0.1)
            assert scheduler.active_streams() == 0 and scheduler.failures == 0
        finally:
            await scheduler.close()

    asyncio.run(run())


def test_a_failing_stream_does_not_stop_the_others(decoder) -> None:
    async def run() -> None:
        scheduler = DecoderScheduler(decoder, CONFIG, policy=FixedSchedule((10,)), max_batch=4)
        scheduler.start()
        try:
            bad, good = scheduler.open_stream(), scheduler.open_stream()
            bad.push([-1] * 12, final=True)  # invalid token ids: prepare raises for this stream only
            good.push(list(range(25)), final=True)
            with pytest.raises(ValueError):
                _ = [c async for c in bad.audio()]
            assert sum(len(c) for c in [c async for c in good.audio()]) > 0
            assert scheduler.alive and scheduler.failures == 1
            bad.close()
            good.close()
        finally:
            await scheduler.close()

    asyncio.run(run())


class _Fake(SimpleNamespace):
    __hash__ = object.__hash__  # held in a set, as the scheduler's streams are


def _stream(pending: int, buffered: float, decoded: int = 40, *, started: bool = True) -> SimpleNamespace:
    view = StreamView(pending=pending, started=started, buffered_s=buffered, decoded=decoded)
    return _Fake(
        view=lambda _now, v=view: v,
        finished=False,
        _final=False,
        _tokens=[0] * pending,
        decoded=decoded,
        first_emit=0.0 if started else None,
    )


def _bare_scheduler(max_batch: int, max_pass_s: float | None) -> DecoderScheduler:
    """A scheduler without a thread or a decoder: only `_pick`'s decisions are tested with it."""
    scheduler = DecoderScheduler.__new__(DecoderScheduler)
    scheduler.max_batch = max_batch
    scheduler.policy = AdaptiveChunkPolicy(first_chunk=10, lead_s=0.3)
    scheduler.stream_config = DecoderStreamConfig(max_prompt_tokens=100)
    scheduler._pass_ewma = 0.05
    scheduler.max_pass_s, scheduler.cost = max_pass_s, PassCost()
    scheduler.decoder = SimpleNamespace(batch_buckets=None)  # no CUDA graphs: powers of two, as their default
    scheduler.clock, scheduler.hold, scheduler.held_passes, scheduler._held_rows = time.monotonic, None, 0, 0
    return scheduler


def test_pick_most_urgent_first_keeps_short_rows_short_and_fills_the_bucket() -> None:
    scheduler = _bare_scheduler(max_batch=4, max_pass_s=None)
    first = _stream(10, 0.0, decoded=0, started=False)
    dry = _stream(12, 0.0)  # running dry: due with what it has
    ahead = _stream(20, 5.0)  # 5 s buffered: waits for ~60 tokens
    dry2 = _stream(8, 0.25)
    rider = _stream(30, 3.0, decoded=0)  # not due, but has a steady chunk waiting and a short row
    batch = scheduler._pick({first, dry, dry2, ahead, rider})
    # Least buffered first; a first chunk ranks as nearly dry; 3 due rows make a 4-row bucket: one free row.
    assert [s for s, _ in batch][:3] == [dry, first, dry2] and len(batch) == 4
    # free rows go to a waiting stream, never longer than the pass's longest row (52: 40 history + 12)
    assert (rider, 30) in batch and all(s is not ahead for s, _ in batch)
    assert {id(s): n for s, n in batch}[id(first)] == 10
    # With a 3-row graph bucket there is no free row: the rider stays out.
    scheduler.decoder.batch_buckets = (1, 2, 3, 4)
    batch = scheduler._pick({first, dry, dry2, ahead, rider})
    assert [s for s, _ in batch] == [dry, first, dry2] and scheduler.cost.buckets == (1, 2, 3, 4)


def test_a_first_chunks_pass_takes_only_thin_buffers_along_with_first_company() -> None:
    """FixedSchedule.first_company_s: a pass led by a first chunk leaves out a started stream's chunk that can wait a
    pass (buffer at or above the bound); other first chunks and thin buffers still join. None: every due chunk."""
    scheduler = _bare_scheduler(max_batch=8, max_pass_s=None)
    first, other_first = _stream(10, 0.0, decoded=0, started=False), _stream(10, 0.0, decoded=0, started=False)
    second = _stream(8, 0.35, decoded=10)  # its first chunk just played out 30 ms: can wait a pass
    thin = _stream(8, 0.1, decoded=18)
    streams = {first, other_first, second, thin}
    scheduler.policy = FixedSchedule((10, 8, 8, 26))
    assert {s for s, _ in scheduler._pick(streams)} == streams
    scheduler.policy = FixedSchedule((10, 8, 8, 26), first_company_s=0.25)
    assert {s for s, _ in scheduler._pick(streams)} == {first, other_first, thin}
    # Without a first chunk due, the bound does not apply: the next pass takes the second chunk.
    assert {s for s, _ in scheduler._pick({second, thin})} == {second, thin}


def test_pass_cost_fits_fixed_and_per_unit_time() -> None:
    cost = PassCost()
    assert cost.estimate(100) is None  # nothing measured yet
    for rows, longest in [(1, 10), (4, 140), (16, 180), (32, 180), (8, 60), (2, 200)]:
        units = PassCost.units(rows, longest)
        cost.observe(units, 0.045 + 2e-5 * units)  # the H200 profile's shape: 45 ms fixed + linear
    assert cost.estimate(PassCost.units(16, 100)) == pytest.approx(0.045 + 2e-5 * 1600, rel=1e-6)
    assert PassCost.units(17, 10) == 320  # rows padded to the power-of-two graph bucket
    assert PassCost.units(17, 10, (16, 24, 32)) == 240 and PassCost(buckets=(16, 24)).padded_units(17, 10) == 240


def test_pick_keeps_passes_within_the_expected_length_budget() -> None:
    scheduler = _bare_scheduler(max_batch=32, max_pass_s=0.1)
    for rows in (1, 2, 4, 8):
        scheduler.cost.observe(PassCost.units(rows, 100), 0.02 + 1e-4 * PassCost.units(rows, 100))
    streams = {_stream(60, 0.1) for _ in range(8)}  # all running low: due with 60 tokens after 40 of history
    batch = scheduler._pick(streams)
    # 100-token rows cost 0.02 + 1e-4 * 100 * (rows rounded up to a power of two): 4 rows 0.06 s, 8 rows 0.10 s.
    assert len(batch) == 8
    scheduler.max_pass_s = 0.07
    assert len(scheduler._pick(streams)) == 4
    scheduler.max_pass_s = None
    assert len(scheduler._pick(streams)) == 8


def test_a_final_flush_longer_than_max_chunk_is_split() -> None:
    scheduler = DecoderScheduler.__new__(DecoderScheduler)
    scheduler.policy = AdaptiveChunkPolicy(first_chunk=10, max_chunk=80)
    s = _stream(200, 5.0)
    s._final = True
    assert scheduler._size(s, 0.0, 0.1) == 80
    s._tokens = [0] * 50
    assert scheduler._size(s, 0.0, 0.1) == -1  # the rest in one final chunk
    scheduler.policy = FixedSchedule((10, 20))
    s._tokens = [0] * 200
    assert scheduler._size(s, 0.0, 0.1) == -1  # the reference's streaming: one final chunk


def test_pool_spreads_streams_and_counts_sessions(decoder) -> None:

    async def run() -> None:
        pool = DecoderPool([DecoderScheduler(decoder, CONFIG), DecoderScheduler(decoder, CONFIG)])
        pool.start()
        try:
            streams = [pool.open_stream() for _ in range(4)]
            assert [s.active_streams() for s in pool.schedulers] == [2, 2]  # least-loaded placement
            audio = await asyncio.gather(*(s.decode(list(range(i, i + 20))) for i, s in enumerate(streams)))
            assert all(len(a) > 0 for a in audio)
            for s in streams:
                s.close()
            await asyncio.sleep(0.2)
            assert pool.active_streams() == 0
            assert pool.chunks == 4 and all(s.chunks for s in pool.schedulers)  # both devices did work
        finally:
            await pool.close()

    asyncio.run(run())


class _Hooked:
    """The decoder, with a hook run once between two ODE steps of its first pass (a chunk arriving mid-pass)."""

    def __init__(self, decoder, hook) -> None:
        self._decoder, self._hook, self.passes = decoder, hook, []

    def __getattr__(self, name: str):
        return getattr(self._decoder, name)

    def begin_batch(self, requests):
        decode_pass = self._decoder.begin_batch(requests)
        self.passes.append([len(r.prompt_tokens) + len(r.tokens) for r in requests])
        if len(self.passes) == 1:
            step, hook = decode_pass.step, self._hook

            def step_and_hook() -> bool:
                more = step()
                if decode_pass.remaining_steps == 7:
                    hook()
                return more

            decode_pass.step = step_and_hook
        return decode_pass


@pytest.mark.parametrize("preempt", [True, False])
def test_a_first_chunk_due_mid_pass_runs_between_steps_of_a_long_pass(decoder, preempt: bool) -> None:
    rng = np.random.default_rng(9)
    long_seq, short_seq = rng.integers(0, 16384, 60).tolist(), rng.integers(0, 16384, 18).tolist()
    with decoder.open_stream(config=CONFIG) as stream:
        expected = [stream.feed(long_seq, final=True)]  # pushed whole: one final chunk
    with decoder.open_stream(config=CONFIG) as stream:
        expected.append(np.concatenate([stream.feed(short_seq[:10]), stream.feed(short_seq[10:], final=True)]))

    async def run() -> tuple[list[str], list[np.ndarray], int]:
        arrivals: list[str] = []
        late: list = []
        hooked = _Hooked(decoder, lambda: late[0].push(short_seq[:10]))  # on the worker thread, mid-pass
        scheduler = DecoderScheduler(
            hooked, CONFIG, policy=FixedSchedule(CONFIG.schedule), max_batch=4, preempt=preempt
        )
        scheduler.start()
        try:
            long, short = scheduler.open_stream(), scheduler.open_stream()
            late.append(short)

            async def collect(name: str, stream) -> np.ndarray:
                chunks = []
                async for c in stream.audio():
                    arrivals.append(name)
                    chunks.append(c)
                    if name == "short" and len(chunks) == 1:
                        stream.push(short_seq[10:], final=True)
                stream.close()
                return np.concatenate(chunks)

            long.push(long_seq, final=True)  # one 60-token pass, the longest row
            out = await asyncio.gather(collect("long", long), collect("short", short))
            return arrivals, out, scheduler.preemptions
        finally:
            await scheduler.close()

    arrivals, out, preemptions = asyncio.run(run())
    # Preempting: the short stream's first chunk (a 10-token row) ran between the long pass's ODE steps and came out
    # first; without it, the first chunk waited for the whole long pass. (On a loaded machine the long pass may still
    # run when the short stream's last chunk is due, which preempts it again.)
    assert (preemptions >= 1) == preempt
    assert arrivals[0] == ("short" if preempt else "long")
    for got, want in zip(out, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_tokens_taken_between_steps_are_decoded_after_the_pass(decoder) -> None:
    """A reply's last tokens, taken in while a pass runs and too long to preempt it, are decoded right after it,
    though no queue item follows them (the thread must not go to sleep with work due)."""
    rng = np.random.default_rng(10)
    long_seq, late_seq = rng.integers(0, 16384, 60).tolist(), rng.integers(0, 16384, 40).tolist()

    async def run() -> tuple[int, int]:
        late: list = []
        hooked = _Hooked(decoder, lambda: late[0].push(late_seq, final=True))  # a 40-token row: longer than 60 // 2
        scheduler = DecoderScheduler(hooked, CONFIG, policy=FixedSchedule(CONFIG.schedule), max_batch=4, preempt=True)
        scheduler.start()
        try:
            long, other = scheduler.open_stream(), scheduler.open_stream()
            late.append(other)
            long.push(long_seq, final=True)

            async def collect(stream) -> int:
                return sum([len(c) async for c in stream.audio()])

            got = await asyncio.wait_for(asyncio.gather(collect(long), collect(other)), timeout=60)
            long.close()
            other.close()
            return scheduler.preemptions, got[1]
        finally:
            await scheduler.close()

    preemptions, late_samples = asyncio.run(run())
    assert preemptions == 0 and late_samples > 0


def _held_stream(pending: int, buffered: float, *, live: bool = True, started: bool = True) -> SimpleNamespace:
    s = _stream(pending, buffered, decoded=40 if started else 0, started=started)
    s.live = live
    s.buffered_seconds = lambda _now, b=buffered: b
    return s


def test_hold_waits_while_buffers_allow_and_then_takes_the_held_chunks_along() -> None:
    scheduler = _bare_scheduler(max_batch=8, max_pass_s=None)
    scheduler.policy = FixedSchedule((10, 20))
    scheduler.hold = DeadlineHold(0.3)  # pass_seconds() is 0.1: a chunk is needed below 0.4 s buffered
    for rows in (1, 2, 4, 8):
        scheduler.cost.observe(PassCost.units(rows, 60), 0.01 + 1e-5 * PassCost.units(rows, 60))
    ahead = [_held_stream(20, b) for b in (2.0, 3.0)]
    assert scheduler._pick(set(ahead)) == []  # due, but every listener has seconds of audio: nothing runs
    assert scheduler._wait_time(set(ahead), False) == pytest.approx(2.0 - 0.4)  # wakes when the first runs low
    low = _held_stream(20, 0.35)
    batch = scheduler._pick({low, *ahead})
    assert next(s for s, _ in batch) is low and {id(s) for s, _ in batch} == {id(low), *map(id, ahead)}
    assert scheduler.held_passes == 1
    # Never held: a first chunk (first audio), a whole-file reply (nobody plays it yet), a final flush.
    first = _held_stream(10, 0.0, started=False)
    whole = _held_stream(20, 5.0, live=False)
    final = _held_stream(20, 5.0)
    final._final = True
    for s in (first, whole, final):
        assert [e for e, _ in scheduler._pick({s})] == [s]


def test_held_rows_never_make_a_needed_listener_run_dry() -> None:
    scheduler = _bare_scheduler(max_batch=32, max_pass_s=None)
    scheduler.policy = FixedSchedule((100,))
    scheduler.hold = DeadlineHold(0.3)
    for rows in (1, 2, 4, 8, 16):  # 10 ms + 0.1 ms per padded unit: a 140-token row alone 24 ms, 16 rows 234 ms
        scheduler.cost.observe(PassCost.units(rows, 140), 0.01 + 1e-4 * PassCost.units(rows, 140))
    low = _held_stream(100, 0.16)  # needs a chunk; 160 ms left, less the near-miss margin: a 60 ms budget
    ahead = {_held_stream(100, 5.0) for _ in range(15)}
    batch = scheduler._pick({low, *ahead})
    # A 60 ms budget: 2 rows (38 ms) fit, a third (padded to 4: 66 ms) does not.
    assert batch[0][0] is low and len(batch) == 2
    low.buffered_seconds = lambda _now: 0.39
    assert len(scheduler._pick({low, *ahead})) == 16  # 290 ms of budget: every held row fits


def test_held_chunks_decode_to_the_same_audio_later(decoder) -> None:
    rng = np.random.default_rng(7)
    seq = rng.integers(0, 16384, 40).tolist()
    with decoder.open_stream(config=CONFIG) as direct:
        want = np.concatenate([direct.feed(seq[:10]), direct.feed(seq[10:30]), direct.feed(seq[30:], final=True)])

    async def run() -> tuple[np.ndarray, float]:
        scheduler = DecoderScheduler(decoder, CONFIG, policy=FixedSchedule(CONFIG.schedule), hold_lead_s=0.0)
        scheduler.start()
        try:
            stream = scheduler.open_stream(live=True)
            audio = stream.audio()
            stream.push(seq[:30])
            first = await anext(audio)
            at = time.monotonic()
            second = await anext(audio)
            held = time.monotonic() - at
            stream.push(seq[30:], final=True)
            rest = [c async for c in audio]
            stream.close()
            # Every pass is logged for benchmarks: one row each here, the first a reply's first chunk.
            log = list(scheduler.pass_log)
            assert [(p.rows, p.first_rows, p.new_tokens) for p in log] == [(1, 1, 10), (1, 0, 20), (1, 0, 10)]
            assert all(p.seconds > 0 and not p.nested for p in log)
            return np.concatenate([first, second, *rest]), held
        finally:
            await scheduler.close()

    got, held = asyncio.run(run())
    # The second chunk waited while the first one's audio played (0.2 s here, less the expected pass) ...
    assert held > 0.05
    # ... and is the same audio as decoding at once: only when a chunk is decoded moves, never what it holds.
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
