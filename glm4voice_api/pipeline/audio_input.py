"""Client audio -> 16 kHz mono -> speech tokens. Decoding runs in worker threads, tokenizing in the batching worker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from glm4voice_api.audio.decode import decode_audio, decode_base64
from glm4voice_api.config import RequestLimits
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker

TOKENIZER_RATE = 16000


@dataclass(frozen=True)
class SpeechInput:
    """One input audio as the model sees it."""

    tokens: list[int]
    seconds: float


class AudioInput:
    def __init__(self, worker: SpeechTokenizerWorker, limits: RequestLimits) -> None:
        self.worker = worker
        self.limits = limits

    async def decode(self, data: bytes, fmt: str | None, param: str | None) -> np.ndarray:
        """An audio file -> 16 kHz mono float32, within the request limits; AudioError (a 400/413) when it is not."""
        return await asyncio.to_thread(
            decode_audio,
            data,
            format=fmt,
            target_rate=TOKENIZER_RATE,
            max_bytes=self.limits.max_audio_bytes,
            max_seconds=self.limits.max_audio_seconds,
            param=param,
        )

    async def tokenize(self, waveform: np.ndarray) -> SpeechInput:
        """16 kHz mono -> speech tokens (batched with other requests' audio by the worker thread)."""
        return SpeechInput(await self.worker.tokenize(waveform), waveform.shape[0] / TOKENIZER_RATE)

    async def from_bytes(self, data: bytes, fmt: str | None, param: str | None) -> SpeechInput:
        return await self.tokenize(await self.decode(data, fmt, param))

    async def from_base64(self, data: str, fmt: str | None, param: str | None) -> SpeechInput:
        raw = await asyncio.to_thread(decode_base64, data, max_bytes=self.limits.max_audio_bytes, param=param)
        return await self.from_bytes(raw, fmt, param)
