"""ServingRealtime: opens Realtime sessions, resolves what they need (voices, responses, items), client secrets.

The voice activity detector is loaded on first use, in a worker thread, and shared by every session (it batches
their frames on its own thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

import numpy as np

from glm4voice_api.audio.vad import VoiceActivityDetector
from glm4voice_api.config import RealtimeSettings, RequestLimits
from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError, invalid_request, not_found
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.audio_input import AudioInput
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.pipeline.sampling import DEFAULT_TOP_P, RANDOM_WEIGHTS_MAX_TOKENS, Sampling
from glm4voice_api.protocol import realtime as wire
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.model_names import aliases
from glm4voice_api.serving.model_names import check_model as accept_model_name
from glm4voice_api.serving.realtime.audio_io import InputConverter
from glm4voice_api.serving.realtime.config import SessionConfig, unsupported
from glm4voice_api.serving.realtime.conversation import Item
from glm4voice_api.serving.realtime.events import EventFactory, new_id
from glm4voice_api.serving.realtime.response import ResponseSpec
from glm4voice_api.serving.realtime.session import Channel, RealtimeSession, decode_base64
from glm4voice_api.serving.replies import Replies
from glm4voice_api.serving.voices import VoiceResolver
from glm4voice_api.store import Store, StoredClientSecret, hash_api_key
from glm4voice_api.text.tokenizer import GLM4Tokenizer

logger = logging.getLogger(__name__)

MIN_REPLY_RESERVE = 78  # two 13 + 26 cycles: a reply shorter than this is not worth starting
CLIENT_SECRET_PREFIX = "ek_"


class ServingRealtime:
    def __init__(
        self,
        model: ServedModel,
        tokenizer: GLM4Tokenizer,
        sampling: Sampling,
        limits: RequestLimits,
        realtime: RealtimeSettings,
        audio_input: AudioInput,
        voices: VoiceResolver,
        store: Store,
        replies: Replies,
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.limits = limits
        self.realtime = realtime
        self.audio_input = audio_input
        self.voices = voices
        self.store = store
        self.replies = replies
        self.admission = admission
        self.metrics = metrics
        self.active_sessions = 0
        self._detector: VoiceActivityDetector | None = None
        self._detector_lock = asyncio.Lock()

    def observe_voice_to_voice(self, seconds: float) -> None:
        self.metrics.voice_to_voice.observe(seconds)

    async def detector(self) -> VoiceActivityDetector:
        async with self._detector_lock:
            if self._detector is None:
                detector = await asyncio.to_thread(VoiceActivityDetector.load)
                detector.start()
                self._detector = detector
        return self._detector

    async def close(self) -> None:
        if self._detector is not None:
            await self._detector.close()

    async def tokenize(self, audio_16k: np.ndarray) -> list[int]:
        speech = await self.audio_input.tokenize(audio_16k)
        self.metrics.audio_in.inc(speech.seconds)
        return speech.tokens

    async def voice(self, voice: str | dict, tenant: str, param: str) -> Voice | None:
        return await self.voices.resolve(voice, tenant, param=param)

    # -- sessions ----------------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None:
            accept_model_name(self.model, model, "realtime")

    @staticmethod
    def error_text(error: APIError, beta: bool) -> str:
        """An `error` event as text, for errors before a session exists."""
        return json.dumps(EventFactory(beta).error(error))

    async def new_config(self, secret: StoredClientSecret | None) -> SessionConfig:
        config = SessionConfig(
            id=new_id("sess"),
            model=self.model.name,
            expires_at=int(time.time() + self.realtime.max_session_s),
            model_aliases=tuple(name for name, routes in aliases(self.model).items() if "realtime" in routes),
        )
        if secret is not None:
            patch = wire.SessionPatch.model_validate(json.loads(secret.session))
            config = config.patched(patch, self.limits.max_tokens)
        return config

    async def serve(self, channel: Channel, *, tenant: str, beta: bool, config: SessionConfig) -> None:
        cap = self.realtime.max_sessions
        session = RealtimeSession(self, channel, tenant, config, beta)
        if cap and self.active_sessions >= cap:
            await session.error(
                APIError(
                    f"The server has {cap} Realtime sessions open, its limit; retry shortly.",
                    code="session_limit_reached",
                    status=429,
                    type="rate_limit_error",
                )
            )
            await channel.close(1013, "session limit reached")
            return
        self.active_sessions += 1
        try:
            await session.run()
        finally:
            self.active_sessions -= 1

    # -- responses ---------------------------------------------------------------------------------------------
    async def response_spec(
        self, session: RealtimeSession, params: wire.ResponseParams | None
    ) -> tuple[ResponseSpec, list[Item]]:
        """Resolve `response.create` against the session; also the items that must leave to fit the context."""
        p = params or wire.ResponseParams()
        cfg = session.config
        if p.tools:
            raise unsupported("Function calling (tools)", "response.tools")
        if p.input is not None:
            raise unsupported("A custom response input", "response.input")
        if p.conversation not in (None, "auto", "none"):
            raise invalid_request("response.conversation must be 'auto' or 'none'.", "response.conversation")
        modalities = p.output_modalities or p.modalities or cfg.output_modalities
        audio = "audio" in modalities
        out = p.audio.output if p.audio and p.audio.output else None
        fmt = (
            out.format.type
            if out and out.format
            else (wire.BETA_FORMATS[p.output_audio_format] if p.output_audio_format else cfg.output_format)
        )
        voice_given = (out.voice if out else None) or p.voice
        voice_name = (
            (voice_given if isinstance(voice_given, str) else {"id": voice_given.id}) if voice_given else cfg.voice
        )
        voice = await self.voice(voice_name, session.tenant, "response.audio.output.voice") if audio else None
        requested = p.max_output_tokens or p.max_response_output_tokens or cfg.max_output_tokens
        limits = self.limits
        if isinstance(requested, int) and limits.max_tokens and requested > limits.max_tokens:
            raise invalid_request(
                f"max_output_tokens is {requested}; this server allows at most {limits.max_tokens}.",
                "response.max_output_tokens",
            )
        budget = requested if isinstance(requested, int) else limits.default_max_tokens
        if not isinstance(requested, int) and self.model.random_weights:
            budget = min(budget, RANDOM_WEIGHTS_MAX_TOKENS)
        max_len = self.model.max_model_len
        instructions = p.instructions if p.instructions is not None else cfg.instructions
        prompt, dropped = session.conversation.fit(
            instructions, max_len, min(budget, MIN_REPLY_RESERVE), allow_drop=cfg.truncation == "auto"
        )
        budget = min(budget, max_len - len(prompt.token_ids), limits.max_tokens or max_len)
        temperature = p.temperature if p.temperature is not None else cfg.temperature
        params_ = GenerationParams(
            max_tokens=budget,
            temperature=temperature,
            top_p=DEFAULT_TOP_P,
            stop_token_ids=self.sampling.stop_ids,
            constraint=self.sampling.constraint(),
        )
        spec = ResponseSpec(
            id=new_id("resp"),
            item_id=new_id("item"),
            prompt=prompt,
            params=params_,
            audio=audio,
            output_format=fmt,
            voice=voice,
            voice_name=voice_name,
            speed=cfg.speed,
            max_output_tokens=requested,
            in_conversation=p.conversation != "none",
            metadata=p.metadata,
        )
        return spec, dropped

    # -- items from the client ---------------------------------------------------------------------------------
    async def item_from_client(self, item: wire.ItemIn, session: RealtimeSession) -> Item:
        if item.type != "message":
            raise unsupported(f"Items of type '{item.type}'", "item.type")
        if item.role is None:
            raise invalid_request("Missing required parameter: 'item.role'.", "item.role")
        if len(item.content) != 1:
            raise invalid_request("Items with exactly one content part are supported.", "item.content")
        part = item.content[0]
        item_id = item.id or new_id("item")
        kind = {"text": "input_text" if item.role != "assistant" else "output_text", "audio": "output_audio"}.get(
            part.type, part.type
        )
        if (
            item.role in ("user", "system")
            and kind == "input_text"
            or item.role == "assistant"
            and kind == "output_text"
        ):
            if part.text is None:
                raise invalid_request("Missing required parameter: 'item.content[0].text'.", "item.content[0].text")
            return Item(id=item_id, role=item.role, content_type=kind, text=part.text)
        if item.role == "user" and kind == "input_audio":
            if part.audio is None:
                raise invalid_request("Missing required parameter: 'item.content[0].audio'.", "item.content[0].audio")
            raw = decode_base64(part.audio, "item.content[0].audio")
            cap = self.realtime.max_buffer_s
            converter = InputConverter(session.config.input_format)
            audio = converter.convert(raw)
            if len(audio) > cap * 16000:
                raise APIError(
                    f"The item's audio is longer than {cap:g} s.", "item.content[0].audio", code="audio_too_long"
                )
            if len(audio) < 1600:
                raise invalid_request(
                    "The item's audio is shorter than 100 ms.", "item.content[0].audio", code="audio_too_short"
                )
            tokens = await self.tokenize(audio)
            return Item(
                id=item_id,
                role="user",
                content_type="input_audio",
                speech_tokens=tuple(tokens),
                audio_ms=len(audio) // 16,
            )
        if item.role == "assistant" and kind == "output_audio":
            # An earlier answer, by its audio id (a chat reply's `audio.id`): its exact ids come from the store.
            audio_id = part.id or item.id
            stored = await self.store.get_audio(session.tenant, audio_id or "", int(time.time())) if audio_id else None
            if stored is None:
                raise not_found(
                    f"Audio with id '{audio_id}' was not found or has expired.",
                    "item.content[0].id",
                    code="audio_not_found",
                )
            n_audio = sum(1 for t in stored.token_ids if self.tokenizer.ids.is_audio(t))
            return Item(
                id=item.id or new_id("item"),
                role="assistant",
                content_type="output_audio",
                reply_ids=list(stored.token_ids),
                transcript=stored.transcript,
                audio_ms=n_audio * 80,
            )
        raise invalid_request(f"A {item.role} item cannot hold '{part.type}' content.", "item.content[0].type")

    # -- client secrets ----------------------------------------------------------------------------------------
    async def create_client_secret(self, request: wire.ClientSecretRequest, tenant: str) -> wire.ClientSecretResponse:
        ttl = request.expires_after.seconds if request.expires_after else 600
        ttl = min(ttl, self.realtime.client_secret_max_ttl_s)
        patch = request.session or wire.SessionPatch(type="realtime")
        config = await self.new_config(None)
        config = config.patched(patch, self.limits.max_tokens)  # the same checks as session.update
        if isinstance(config.voice, dict):
            await self.voice(config.voice, tenant, "session.audio.output.voice")
        now = int(time.time())
        value = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        stored = StoredClientSecret(
            secret_hash=hash_api_key(value),
            tenant=tenant,
            session=patch.model_dump_json(exclude_unset=True),
            created_at=now,
            expires_at=now + ttl,
        )
        await self.store.put_client_secret(stored)
        return wire.ClientSecretResponse(value=value, expires_at=stored.expires_at, session=config.render(beta=False))
