"""Client audio -> 16 kHz mono -> speech tokens. Decoding runs in worker threads, tokenizing in the batching worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from glm4voice_api.audio.decode import decode_audio, decode_base64
from glm4voice_api.config import RequestLimits
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker

TOKENIZER_RATE = 16000


class AudioInput:
    def __init__(self, worker: SpeechTokenizerWorker, limits: RequestLimits) -> None:
        self.worker = worker
        self.limits = limits
        self.observe_seconds: Callable[[float], None] = lambda _seconds: None
        """Called with the seconds of each decoded input (the app binds it to its metrics)."""

    def _decode(self, data: bytes, fmt: str | None, param: str | None):
        return decode_audio(data, format=fmt, target_rate=TOKENIZER_RATE, max_bytes=self.limits.max_audio_bytes,
                            max_seconds=self.limits.max_audio_seconds, param=param)  # fmt: skip

    async def tokens_from_bytes(self, data: bytes, fmt: str | None, param: str | None) -> list[int]:
        """Speech tokens of an audio file; AudioError (a 400/413) names what is wrong with it."""
        waveform = await asyncio.to_thread(self._decode, data, fmt, param)
        self.observe_seconds(waveform.shape[0] / TOKENIZER_RATE)
        return await self.worker.tokenize(waveform)

    async def tokens_from_base64(self, data: str, fmt: str | None, param: str | None) -> list[int]:
        raw = await asyncio.to_thread(decode_base64, data, max_bytes=self.limits.max_audio_bytes, param=param)
        return await self.tokens_from_bytes(raw, fmt, param)
