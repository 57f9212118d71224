"""Client audio -> 16 kHz mono -> speech tokens. Decoding runs in worker threads, tokenizing in the batching worker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from glm4voice_api.audio.decode import decode_audio, decode_base64
from glm4voice_api.audio.errors import AUDIO_TOO_LONG, AudioError
from glm4voice_api.config import RequestLimits
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker

TOKENIZER_RATE = 16000


@dataclass
class AudioBudget:
    """One request's input audio, counted part by part before each is decoded or tokenized, so that a request's
    work is bounded before it is done: `max_seconds` for all its audio together (a part's header is checked
    before decoding it, its samples while decoding), and the speech tokens the audio will make (12.5 per second,
    known from the samples before tokenizing) against the context, which no prompt can exceed."""

    max_seconds: float
    max_tokens: int
    tokens_per_second: float
    seconds: float = 0.0

    @property
    def seconds_left(self) -> float:
        return self.max_seconds - self.seconds

    def take(self, seconds: float, param: str | None) -> None:
        """Count a decoded part; AudioError when the request's audio no longer fits the context."""
        self.seconds += seconds
        # A lower bound (the tokenizer makes ceil(seconds x rate) tokens or one fewer): never refuses what fits.
        tokens = int(self.seconds * self.tokens_per_second) - 1
        if tokens > self.max_tokens:
            raise AudioError(
                f"This model's maximum context length is {self.max_tokens} tokens. However, the request's "
                f"{self.seconds:.1f} s of audio make at least {tokens} speech tokens. Please send less audio.",
                code="context_length_exceeded",
                param=param,
            )


@dataclass(frozen=True)
class SpeechInput:
    """One input audio as the model sees it."""

    tokens: list[int]
    seconds: float


class AudioInput:
    def __init__(self, worker: SpeechTokenizerWorker, limits: RequestLimits, tokens_per_second: float = 12.5) -> None:
        self.worker = worker
        self.limits = limits
        self.tokens_per_second = tokens_per_second

    def budget(self, max_tokens: int) -> AudioBudget:
        """A new request's budget: `request_limits.max_audio_seconds` for all its audio, `max_tokens` of context."""
        return AudioBudget(self.limits.max_audio_seconds, max_tokens, self.tokens_per_second)

    async def decode(
        self, data: bytes, fmt: str | None, param: str | None, budget: AudioBudget | None = None
    ) -> np.ndarray:
        """An audio file -> 16 kHz mono float32, within the request limits; AudioError (a 400/413) when it is not.
        With a `budget`, the part must fit what the request's earlier parts left, and counts against it."""
        return await self._decoded(data, fmt, param, budget, b64=False)

    async def _decoded(
        self, data: bytes | str, fmt: str | None, param: str | None, budget: AudioBudget | None, *, b64: bool
    ) -> np.ndarray:
        max_seconds = self.limits.max_audio_seconds if budget is None else budget.seconds_left
        if max_seconds <= 0:
            raise AudioError(
                f"The request's audio is longer than the {self.limits.max_audio_seconds:g} s limit for all of its "
                "parts together.",
                code=AUDIO_TOO_LONG,
                param=param,
            )

        def work() -> np.ndarray:
            raw = decode_base64(data, max_bytes=self.limits.max_audio_bytes, param=param) if b64 else data
            return decode_audio(
                raw,
                format=fmt,
                target_rate=TOKENIZER_RATE,
                max_bytes=self.limits.max_audio_bytes,
                max_seconds=max_seconds,
                param=param,
            )

        # One worker-thread hop for base64 and decoding: under load each hop waits for the event loop.
        waveform = await asyncio.to_thread(work)
        if budget is not None:
            budget.take(waveform.shape[0] / TOKENIZER_RATE, param)
        return waveform

    async def tokenize(self, waveform: np.ndarray) -> SpeechInput:
        """16 kHz mono -> speech tokens (batched with other requests' audio by the worker thread)."""
        return SpeechInput(await self.worker.tokenize(waveform), waveform.shape[0] / TOKENIZER_RATE)

    async def from_bytes(
        self, data: bytes, fmt: str | None, param: str | None, budget: AudioBudget | None = None
    ) -> SpeechInput:
        return await self.tokenize(await self.decode(data, fmt, param, budget))

    async def from_base64(
        self, data: str, fmt: str | None, param: str | None, budget: AudioBudget | None = None
    ) -> SpeechInput:
        return await self.tokenize(await self._decoded(data, fmt, param, budget, b64=True))
