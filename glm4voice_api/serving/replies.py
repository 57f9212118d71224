"""Runs a reply for chat and speech: the engine turn, and its speech from the decoder when spoken, under the
server's time limits, with its audio metered (seconds out, real-time factor, first-audio latency)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from glm4voice_api.engine.base import GenerationParams, LLMEngine
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.decoder_pool import DecoderPool
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.spoken_turn import AudioChunk, SpokenTurn
from glm4voice_api.pipeline.turn import Turn, TurnEvent
from glm4voice_api.serving.deadlines import AudioMeter, TimeLimits
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.text.prompt import Prompt
from glm4voice_api.text.tokenizer import GLM4Tokenizer


def is_audio(event: object) -> bool:
    return isinstance(event, AudioChunk)


class Replies:
    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: GLM4Tokenizer,
        decoder: DecoderScheduler | DecoderPool,
        time_limits: TimeLimits,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.time_limits = time_limits
        self.metrics = metrics

    @property
    def sample_rate(self) -> int:
        """The decoder's output rate (22.05 kHz); encoders resample from it."""
        return self.decoder.sample_rate

    def turn(self, prompt: Prompt, params: GenerationParams, request_id: str) -> Turn:
        """A turn, not started yet: the engine request begins when its events are first read."""
        return Turn(self.engine, self.tokenizer, prompt, params, request_id)

    def events(
        self,
        turn: Turn,
        *,
        spoken: bool,
        voice: Voice | None = None,
        stream: bool = False,
        live: bool | None = None,
    ) -> AsyncIterator[TurnEvent | AudioChunk]:
        """The turn's events (with `AudioChunk`s of speech when `spoken`) under the time limits. `live`: a listener
        plays the audio at its own rate as it comes (default: `stream`), so the decoder may hold chunks the
        listener's buffer allows; not when the audio plays faster than it is decoded (speed > 1)."""
        if not spoken:
            return self.time_limits.bounded(turn.events(), stream=stream)
        live = stream if live is None else live
        speech = SpokenTurn(turn, self.decoder, voice, live=live).events()  # type: ignore[arg-type]
        return self.time_limits.bounded(speech, is_audio=is_audio, stream=stream)

    def meter(self, *, stream: bool) -> AudioMeter:
        return AudioMeter(self.metrics, self.sample_rate, stream=stream)

    def reply_started(self, started: float) -> None:
        """Record the time from `started` (time.monotonic) to this reply's generation starting."""
        self.metrics.reply_start.observe(time.monotonic() - started)

    def first_audio_sent(self, started: float) -> None:
        """Record the time from `started` (time.monotonic) to the first audio bytes sent."""
        self.metrics.first_audio.observe(time.monotonic() - started)
