"""ServingVoices: /v1/audio/voices (create, list, delete a tenant's custom voices).

A voice is the decoder's speaker prompt: the sample's speech tokens plus its 80-bin 22.05 kHz mel, aligned to the
tokens by `SpeechDecoder.make_voice` (fed with the tokens the batching tokenizer worker produced). The flow
conditions every chunk it decodes on this prompt, so its length is paid on every chunk of every reply in that
voice: only the first `MAX_VOICE_SECONDS` of the sample are kept.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from glm4voice_api.audio.decode import decode_audio, upload_format_hint
from glm4voice_api.config import RequestLimits
from glm4voice_api.errors import APIError, invalid_request, not_found
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.pipeline.audio_input import TOKENIZER_RATE, AudioInput
from glm4voice_api.protocol import voices as wire
from glm4voice_api.serving.errors import audio_errors
from glm4voice_api.store import Store, StoredVoice

MAX_SAMPLE_BYTES = 10 * 1024 * 1024  # OpenAI's audio_sample limit
# CosyVoice-style prompts are 3-10 s; longer ones add flow cost to every chunk without a better likeness.
MAX_VOICE_SECONDS = 10.0
MIN_VOICE_SECONDS = 1.0
MAX_NAME_CHARS = 256


def _voice_object(v: StoredVoice) -> wire.VoiceObject:
    return wire.VoiceObject(id=v.id, name=v.name, created_at=v.created_at)


class ServingVoices:
    def __init__(
        self,
        store: Store,
        limits: RequestLimits,
        audio_input: AudioInput,
        voice_maker: SpeechDecoder,
        *,
        max_voices: int = 0,
    ) -> None:
        self.store = store
        self.limits = limits
        self.max_voices = max_voices
        """Voices one tenant may keep (0: no limit): every voice is stored and listed, so the count is bounded."""
        self.audio_input = audio_input
        self.voice_maker = voice_maker
        """Aligns the sample's mel to its speech tokens (`SpeechDecoder.make_voice`: mel geometry, no weights)."""

    @property
    def max_sample_bytes(self) -> int:
        return min(MAX_SAMPLE_BYTES, self.limits.max_audio_bytes)

    async def create_voice(self, request: wire.VoiceCreateRequest, sample: bytes, tenant: str) -> wire.VoiceObject:
        name = request.name.strip()
        if not 0 < len(name) <= MAX_NAME_CHARS:
            raise invalid_request(f"The voice name must be 1 to {MAX_NAME_CHARS} characters.", "name")
        if not request.consent.strip():
            raise invalid_request("'consent' must name the speaker's consent (OpenAI's consent id).", "consent")
        if request.type not in (None, "audio_sample"):
            raise APIError(
                f"Unsupported value: 'type' does not support '{request.type}'. Supported values are: 'audio_sample'.",
                param="type",
                code="unsupported_value",
            )
        await self._check_quota(tenant)  # before the work: a tenant at its quota costs no decoding
        voice = await self._make_voice(sample, upload_format_hint(request.audio_sample.filename))
        await self._check_quota(tenant)  # again: creations that ran at once may have filled it meanwhile
        stored = StoredVoice(
            id=f"voice_{uuid.uuid4().hex}",
            tenant=tenant,
            name=name,
            prompt_tokens=list(voice.prompt_tokens),
            prompt_mel=np.ascontiguousarray(voice.prompt_mel, dtype=np.float32).tobytes(),
            mel_frames=int(voice.prompt_mel.shape[1]),
            created_at=int(time.time()),
        )
        await self.store.put_voice(stored)
        return _voice_object(stored)

    async def _check_quota(self, tenant: str) -> None:
        if self.max_voices and await self.store.count_voices(tenant) >= self.max_voices:
            raise invalid_request(
                f"This tenant already has {self.max_voices} voices, the most it may keep; delete one first.",
                "audio_sample",
                code="voice_quota_exceeded",
            )

    async def _make_voice(self, sample: bytes, hint: str | None) -> Voice:
        rate = self.voice_maker.sample_rate

        def decode(target_rate: int) -> np.ndarray:
            return decode_audio(
                sample,
                format=hint,
                target_rate=target_rate,
                max_bytes=self.max_sample_bytes,
                max_seconds=self.limits.max_audio_seconds,
                param="audio_sample",
            )

        # Two decodes of the same bytes (16 kHz for the tokenizer, the decoder's rate for the mel) rather than a
        # resample of one: each then matches what the chat input path and the reference feed their models.
        async with audio_errors():
            wav16, wav_mel = await asyncio.gather(
                asyncio.to_thread(decode, TOKENIZER_RATE), asyncio.to_thread(decode, rate)
            )
        seconds = wav16.shape[0] / TOKENIZER_RATE
        if seconds < MIN_VOICE_SECONDS:
            raise invalid_request(
                f"The audio sample is {seconds:.2f} s long; a voice needs at least "
                f"{MIN_VOICE_SECONDS:.0f} s of speech.",
                "audio_sample",
                code="audio_too_short",
            )
        speech = await self.audio_input.tokenize(wav16[: int(MAX_VOICE_SECONDS * TOKENIZER_RATE)])
        tokens = speech.tokens
        if not tokens:
            raise invalid_request("The audio sample produced no speech tokens.", "audio_sample", code="empty_audio")
        # make_voice pads or cuts the mel audio to exactly the tokens' span; torch work, so off the event loop.
        return await asyncio.to_thread(
            self.voice_maker.make_voice, wav_mel[: int(MAX_VOICE_SECONDS * rate)], rate, tokens
        )

    async def list_voices(self, tenant: str) -> wire.VoiceList:
        return wire.VoiceList(data=[_voice_object(v) for v in await self.store.list_voices(tenant)])

    async def delete_voice(self, voice_id: str, tenant: str) -> wire.VoiceDeleted:
        if not await self.store.delete_voice(tenant, voice_id):
            raise not_found(f"Voice with id '{voice_id}' was not found.", param="voice_id", code="voice_not_found")
        return wire.VoiceDeleted(id=voice_id)
