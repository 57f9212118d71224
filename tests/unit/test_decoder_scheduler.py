"""DecoderScheduler: batched output equals separate decoding; urgency and length decide each pass; close frees."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.decoder_scheduler import DecoderPool, DecoderScheduler

TINY = Path("/work/shared/conformance/tiny_a")
pytestmark = pytest.mark.skipif(not TINY.is_dir(), reason="conformance data not available")
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
        scheduler = DecoderScheduler(decoder, CONFIG, max_batch=4)
        scheduler.start()
        try:

            async def one(seq: list[int]) -> np.ndarray:
                stream = scheduler.open_stream()
                try:
                    return np.concatenate([await stream.feed(seq[:30]), await stream.feed(seq[30:], final=True)])
                finally:
                    stream.close()

            out = await asyncio.gather(*(one(s) for s in seqs))
            await asyncio.sleep(0.2)
            assert scheduler.active_streams() == 0
            assert scheduler.batches < scheduler.chunks  # chunks of several streams shared a pass
            return out
        finally:
            await scheduler.close()

    for got, want in zip(asyncio.run(run()), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def _entry(buffered: float, tokens: int) -> tuple:
    stream = SimpleNamespace(buffered_seconds=lambda _now, b=buffered: b)
    return (SimpleNamespace(stream=stream), SimpleNamespace(prompt_tokens=[0] * (tokens - 10), tokens=[0] * 10))


def test_pick_most_urgent_first_and_keeps_short_rows_short() -> None:
    scheduler = DecoderScheduler.__new__(DecoderScheduler)
    scheduler.max_batch = 3
    first_chunk = _entry(-1.0, 10)  # no audio yet: most urgent
    steady = [_entry(b, 170) for b in (0.5, 2.0, 4.0)]
    other_first = _entry(-1.0, 12)
    pending = [*steady, first_chunk, other_first]
    batch = scheduler._pick(pending)
    # The two first chunks go together; 170-token rows would pad them 10x, so they wait for the next pass.
    assert {id(e) for e in batch} == {id(first_chunk), id(other_first)}
    batch = scheduler._pick(pending)
    assert [e[0].stream.buffered_seconds(0) for e in batch] == [0.5, 2.0, 4.0]  # least buffered first, max_batch
    assert pending == []


def test_pool_spreads_streams_and_counts_sessions(decoder) -> None:

    async def run() -> None:
        pool = DecoderPool([DecoderScheduler(decoder, CONFIG), DecoderScheduler(decoder, CONFIG)])
        pool.start()
        try:
            streams = [pool.open_stream() for _ in range(4)]
            assert [s.active_streams() for s in pool.schedulers] == [2, 2]  # least-loaded placement
            audio = await asyncio.gather(*(s.feed(list(range(i, i + 20)), final=True) for i, s in enumerate(streams)))
            assert all(len(a) > 0 for a in audio)
            for s in streams:
                s.close()
            await asyncio.sleep(0.2)
            assert pool.active_streams() == 0
            assert pool.chunks == 4 and all(s.chunks for s in pool.schedulers)  # both devices did work
        finally:
            await pool.close()

    asyncio.run(run())
