"""Faults inside the speech pipeline are visible and recoverable: a decoder scheduler whose thread dies fails its
streams and every new one at once (not after the 120 s first-audio limit) and says so (`alive`, which liveness
reads); a decoder error mid-answer stops the engine request at once instead of letting it generate into a queue
nobody reads. The real tiny decoder from the conformance set; the engine is a stand-in that counts what it made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from glm4voice_api.engine.base import GenerationDelta, GenerationParams
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import FixedSchedule
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler, DecoderStoppedError
from glm4voice_api.pipeline.spoken_turn import SpokenTurn
from glm4voice_api.pipeline.turn import Turn
from glm4voice_api.text.prompt import Prompt
from glm4voice_api.text.tokenizer import GLM4Tokenizer
from tests.conftest import CONFORMANCE

pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens
CONFIG = DecoderStreamConfig(schedule=(10, 20), max_prompt_tokens=30)


@pytest.fixture(scope="module")
def decoder():
    return load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")


class _BrokenPolicy:
    """Sizes chunks as the fixed schedule until told to fail: then it raises on the scheduler's thread, outside any
    per-stream guard."""

    def __init__(self, schedule: tuple[int, ...]) -> None:
        self.fixed = FixedSchedule(schedule)
        self.broken = False

    def __getattr__(self, name: str):
        return getattr(self.fixed, name)

    def chunk_size(self, view, pass_s):
        if self.broken:
            raise RuntimeError("policy bug")
        return self.fixed.chunk_size(view, pass_s)


def test_a_dead_decoder_thread_fails_its_streams_and_new_ones_at_once(decoder) -> None:
    async def run() -> None:
        policy = _BrokenPolicy(CONFIG.schedule)
        scheduler = DecoderScheduler(decoder, CONFIG, policy=policy, max_batch=4)
        scheduler.start()
        try:
            waiting = scheduler.open_stream()
            audio = waiting.audio()
            policy.broken = True
            waiting.push([1, 2, 3] * 10)  # the thread picks the stream's chunk, and dies
            with pytest.raises(DecoderStoppedError):
                await asyncio.wait_for(anext(audio), 30)  # told at once, not after a first-audio limit
            assert not scheduler.alive
            with pytest.raises(DecoderStoppedError):
                scheduler.open_stream()
            waiting.close()
        finally:
            await scheduler.close()

    asyncio.run(run())


class _Engine:
    """Yields audio tokens, one per step, until it has made `limit` of them or its stream is closed (aborted)."""

    def __init__(self, audio_token: int, limit: int = 400) -> None:
        self.audio_token = audio_token
        self.limit = limit
        self.made = 0
        self.closed_early = False

    async def generate(self, prompt_ids, params, request_id):
        finished = False
        try:
            while self.made < self.limit:
                await asyncio.sleep(0.005)
                self.made += 1
                yield GenerationDelta(token_ids=[self.audio_token])
            finished = True
            yield GenerationDelta(token_ids=[], finished=True, finish_reason="length")
        finally:
            self.closed_early = not finished


class _FailingStream:
    """A decoder session whose first chunk fails (a bad chunk on the decoder thread)."""

    closed = False

    def push(self, tokens, *, final=False) -> None:
        pass

    async def audio(self):
        await asyncio.sleep(0.05)
        raise RuntimeError("bad chunk")
        yield  # pragma: no cover - an async generator

    def close(self) -> None:
        self.closed = True


class _FailingScheduler:
    def open_stream(self, voice=None, *, live: bool = False) -> _FailingStream:
        return _FailingStream()


def test_a_decoder_error_mid_answer_aborts_the_engine_request_at_once(tiny_llm_dir: Path) -> None:
    tokenizer = GLM4Tokenizer.from_dir(tiny_llm_dir)
    engine = _Engine(tokenizer.ids.audio_id(7))
    prompt = Prompt(token_ids=[1, 2, 3], audio_tokens=0, input_mode="text")
    turn = Turn(engine, tokenizer, prompt, GenerationParams(max_tokens=400), "req-1")  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(RuntimeError, match="bad chunk"):
            async for _ in SpokenTurn(turn, _FailingScheduler()).events():  # type: ignore[arg-type]
                pass

    asyncio.run(run())
    # Stopped within a few steps of the error, not after all 400 tokens of the reply.
    assert engine.closed_early and engine.made < engine.limit // 2, engine.made
