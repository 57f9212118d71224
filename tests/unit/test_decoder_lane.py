"""First-chunk lane: first chunks are decoded beside a running long pass (not after it), the audio equals direct
decoding, and a stream closed or failing while the lane holds it is freed without touching the others."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import FixedSchedule
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")
CONFIG = DecoderStreamConfig(schedule=(10, 20), max_prompt_tokens=30)
LANE_TOKENS = 30  # the schedule's first two chunks: 10, then 20 more (a row of 30)


@pytest.fixture(scope="module")
def decoder():
    return load_speech_decoder(TINY / "speech_decoder")


def _scheduler(decoder, **kw) -> DecoderScheduler:
    return DecoderScheduler(
        decoder, CONFIG, policy=FixedSchedule(CONFIG.schedule), max_batch=4, lane_tokens=LANE_TOKENS, **kw
    )


async def _collect(stream, tokens: list[int]) -> np.ndarray:
    try:
        return await stream.decode(tokens)
    finally:
        stream.close()


def test_lane_streams_equal_direct_decoding(decoder) -> None:
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 16384, n).tolist() for n in (75, 47, 12)]
    expected = []
    for seq in seqs:
        with decoder.open_stream(config=CONFIG) as stream:
            if len(seq) < 30:  # its tokens and the final flush come together: one final chunk
                expected.append(stream.feed(seq, final=True))
                continue
            expected.append(np.concatenate([stream.feed(seq[:30]), stream.feed(seq[30:], final=True)]))

    async def run() -> list[np.ndarray]:
        scheduler = _scheduler(decoder)
        scheduler.start()
        try:

            async def one(seq: list[int]) -> np.ndarray:
                stream = scheduler.open_stream()
                try:
                    audio = stream.audio()
                    stream.push(seq[:30])
                    head = [await anext(audio) for _ in range(2 if len(seq) >= 30 else 0)]
                    stream.push(seq[30:], final=True)
                    return np.concatenate(head + [c async for c in audio])
                finally:
                    stream.close()

            out = await asyncio.gather(*(one(s) for s in seqs))
            await asyncio.sleep(0.2)
            assert scheduler.active_streams() == 0 and scheduler.failures == 0
            lane = scheduler.lane
            assert lane is not None and not lane.busy
            # Every chunk of a stream's first 30 tokens went through the lane: 2 for the long streams, and the
            # 12-token stream's only (final) chunk; the long streams' tails went through the worker's passes.
            assert lane.chunks == 5
            assert scheduler.chunks == 2
            assert scheduler.first_chunks == 3
            assert scheduler.first_pass_s > 0 and scheduler.first_supply_s >= 0 and scheduler.first_wait_s >= 0
            return out
        finally:
            await scheduler.close()

    for got, want in zip(asyncio.run(run()), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


class _SlowPasses:
    """The decoder, with every ODE step of the worker's passes slowed down (the lane's passes run at full speed)."""

    def __init__(self, decoder, step_s: float) -> None:
        self._decoder, self._step_s = decoder, step_s
        self.started = threading.Event()
        self.finished_at: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self._decoder, name)

    def begin_batch(self, requests, runner=None):
        inner = self._decoder.begin_batch(requests, runner)
        outer = self

        class _Pass:
            remaining_steps = property(lambda _self: inner.remaining_steps)

            def step(self) -> bool:
                outer.started.set()
                time.sleep(outer._step_s)
                return inner.step()

            def wait(self) -> None:
                inner.wait()

            def finish(self):
                out = inner.finish()
                outer.finished_at.append(time.monotonic())
                return out

            def abort(self) -> None:
                inner.abort()

        return _Pass()


def test_a_first_chunk_is_decoded_while_a_long_pass_runs(decoder) -> None:
    slow = _SlowPasses(decoder, step_s=0.15)

    async def run() -> None:
        scheduler = _scheduler(slow)
        scheduler.start()
        try:
            long = scheduler.open_stream()
            rng = np.random.default_rng(3)
            long_task = asyncio.ensure_future(_collect(long, rng.integers(0, 16384, 90).tolist()))
            # Its third chunk (past the lane's 30 tokens) runs in the worker's slowed pass.
            while not slow.started.is_set():
                await asyncio.sleep(0.01)
            new = scheduler.open_stream()
            audio = new.audio()
            new.push(rng.integers(0, 16384, 10).tolist())
            first = await asyncio.wait_for(anext(audio), 30)
            first_at = time.monotonic()
            assert len(first) > 0
            new.push([], final=True)
            _ = [c async for c in audio]
            new.close()
            await long_task
            assert slow.finished_at and first_at < slow.finished_at[0]  # it did not wait for the long pass
            await asyncio.sleep(0.1)
            assert scheduler.active_streams() == 0 and scheduler.failures == 0
        finally:
            await scheduler.close()

    asyncio.run(run())


def test_close_and_failure_while_lent_free_the_stream_only(decoder) -> None:
    async def run() -> None:
        scheduler = _scheduler(decoder)
        scheduler.start()
        try:
            gone, bad, good = scheduler.open_stream(), scheduler.open_stream(), scheduler.open_stream()
            gone.push(list(range(10)))
            gone.close()  # possibly while the lane holds it: freed when the lane hands it back
            bad.push([-1] * 12, final=True)  # the lane's prepare raises for this stream only
            with pytest.raises(ValueError):
                _ = [c async for c in bad.audio()]
            bad.close()
            assert len(await _collect(good, list(range(40)))) > 0
            for _ in range(100):
                if scheduler.active_streams() == 0:
                    break
                await asyncio.sleep(0.05)
            assert scheduler.active_streams() == 0
            assert scheduler.failures == 1
        finally:
            await scheduler.close()

    asyncio.run(run())
