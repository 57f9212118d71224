"""ServingChat: validates a chat request, builds the GLM-4-Voice prompt and runs the turn.

Every 4xx is decided before the first byte: `create_chat_completion` validates (audio decoded and tokenized,
audio ids and voices resolved) and only then returns a response or an async iterator of chunks.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

from glm4voice_api.config import RequestLimits
from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError, context_length_exceeded, invalid_request, not_found
from glm4voice_api.pipeline.audio_input import AudioBudget, AudioInput
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.pipeline.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, RANDOM_WEIGHTS_MAX_TOKENS, Sampling
from glm4voice_api.protocol import chat as wire
from glm4voice_api.serving.chat_output import ChatPlan, complete, stream
from glm4voice_api.serving.chat_params import check_parameters
from glm4voice_api.serving.errors import audio_errors
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.model_names import check_model
from glm4voice_api.serving.replies import Replies
from glm4voice_api.serving.voices import VoiceResolver
from glm4voice_api.store import Store
from glm4voice_api.text.prompt import AssistantMessage, AudioPart, Prompt, PromptBuilder, TextPart, UserMessage


def _text_of(content: str | list[wire.TextContentPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


def system_fingerprint(model: ServedModel) -> str:
    """`fp_` and a hash of what decides the replies (model, weights kind, server version): as OpenAI's, it changes
    when the backend does, so clients using `seed` can tell when replies may differ."""
    try:
        server = version("glm4voice-api")
    except PackageNotFoundError:  # a source checkout that was not installed
        server = "dev"
    key = f"{model.name}|{model.root}|{model.random_weights}|{server}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


class ServingChat:
    def __init__(
        self,
        model: ServedModel,
        prompts: PromptBuilder,
        sampling: Sampling,
        limits: RequestLimits,
        audio_input: AudioInput,
        voices: VoiceResolver,
        store: Store,
        replies: Replies,
        metrics: Metrics,
        *,
        audio_ttl_seconds: int,
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.sampling = sampling
        self.limits = limits
        self.audio_input = audio_input
        self.voices = voices
        self.store = store
        """Earlier replies' audio ids (read for the next turn's prompt, written when a spoken reply ends)."""
        self.replies = replies
        self.metrics = metrics
        self.audio_ttl_seconds = audio_ttl_seconds
        self.system_fingerprint = system_fingerprint(model)

    async def create_chat_completion(
        self, request: wire.ChatCompletionRequest, request_id: str, tenant: str
    ) -> wire.ChatCompletionResponse | AsyncIterator[wire.ChatCompletionChunk]:
        async with self.replies.time_limits.preparing():
            plan = await self._plan(request, request_id, tenant)
            if any(plan.audio_ids):
                # A spoken reply's id is stored when it ends: a store that cannot take it now fails the request
                # here (503 store_unavailable, retryable), not after the whole generation or with an id never kept.
                await self.store.check_writable()
        ids = [request_id] if len(plan.params) == 1 else [f"{request_id}-{i}" for i in range(len(plan.params))]
        turns = [self.replies.turn(plan.prompt, p, rid) for p, rid in zip(plan.params, ids, strict=True)]
        if plan.stream:
            return stream(self.replies, self.store, turns, plan)
        return await complete(self.replies, self.store, turns, plan)

    async def _plan(self, req: wire.ChatCompletionRequest, request_id: str, tenant: str) -> ChatPlan:
        check_model(self.model, req.model, "chat")
        audio_out = "audio" in (req.modalities or ["text"])
        checked = check_parameters(req, audio_out=audio_out)
        voice = None
        if audio_out:
            if req.audio is None:
                raise invalid_request(
                    "The 'audio' parameter (voice and format) is required when 'audio' is in modalities.", "audio"
                )
            if req.stream and req.audio.format != "pcm16":
                raise APIError(
                    f"Unsupported value: 'audio.format' does not support '{req.audio.format}' when stream=true. "
                    "Supported values are: 'pcm16'.",
                    param="audio.format",
                    code="unsupported_value",
                )
            voice = await self.voices.resolve(req.audio.voice, tenant, param="audio.voice")
        system, messages = await self._conversation(req, tenant)
        prompt = self.prompts.build(messages, system=system)
        now = int(time.time())
        params = self._params(req, prompt, checked.top_logprobs)
        return ChatPlan(
            prompt=prompt,
            # Each choice samples its own reply: with a seed, choice i uses seed + i (the same seed would make n
            # copies of one reply), so the whole response is still reproducible.
            params=[
                params if i == 0 or params.seed is None else replace(params, seed=params.seed + i)
                for i in range(checked.n)
            ],
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            created=now,
            response_id=f"chatcmpl-{request_id}",
            model=self.model.name,
            tenant=tenant,
            audio_format=req.audio.format if audio_out and req.audio else None,
            voice=voice,
            audio_ids=[f"audio_{uuid.uuid4().hex}" if audio_out else None for _ in range(checked.n)],
            expires_at=now + self.audio_ttl_seconds,
            return_token_ids=req.return_token_ids,
            system_fingerprint=self.system_fingerprint,
            stop=checked.stop,
            top_logprobs=checked.top_logprobs,
        )

    async def _conversation(self, req: wire.ChatCompletionRequest, tenant: str) -> tuple[str | None, list]:
        system_parts: list[str] = []
        messages: list[UserMessage | AssistantMessage] = []
        budget = self.audio_input.budget(self.model.max_model_len)  # all of the request's audio together
        for i, m in enumerate(req.messages):
            if isinstance(m, wire.SystemMessage):
                system_parts.append(_text_of(m.content))
            elif isinstance(m, wire.UserMessage):
                messages.append(await self._user_message(m, i, budget))
            elif isinstance(m, wire.AssistantMessage):
                messages.append(await self._assistant_message(m, i, tenant))
            else:
                raise invalid_request("Tool and function messages are not supported.", f"messages[{i}].role")
        if not messages and not system_parts:
            raise invalid_request("The conversation has no message to answer: add a user message.", "messages")
        system = "\n".join(p for p in system_parts if p) or None
        return system, messages

    async def _assistant_message(self, m: wire.AssistantMessage, index: int, tenant: str) -> AssistantMessage:
        if m.audio is None:
            return AssistantMessage(text=_text_of(m.content))
        stored = await self.store.get_audio(tenant, m.audio.id, int(time.time()))
        if stored is None:  # another tenant's id reads exactly as a nonexistent one
            raise not_found(
                f"Audio with id '{m.audio.id}' was not found or has expired.",
                f"messages[{index}].audio.id",
                code="audio_not_found",
            )
        return AssistantMessage(token_ids=tuple(stored.token_ids))

    async def _user_message(self, m: wire.UserMessage, index: int, budget: AudioBudget) -> UserMessage:
        limit = self.limits.max_text_chars
        raw_parts = [wire.TextContentPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        parts: list[TextPart | AudioPart] = []
        for j, part in enumerate(raw_parts):
            if isinstance(part, wire.TextContentPart):
                if len(part.text) > limit:
                    raise invalid_request(f"Message text is longer than {limit} characters.", f"messages[{index}]")
                parts.append(TextPart(part.text))
                continue
            param = f"messages[{index}].content[{j}].input_audio"
            began = time.monotonic()
            async with audio_errors():
                speech = await self.audio_input.from_base64(
                    part.input_audio.data, part.input_audio.format, param, budget
                )
            self.metrics.audio_prepare.observe(time.monotonic() - began)
            self.metrics.audio_in.inc(speech.seconds)
            parts.append(AudioPart(tuple(speech.tokens)))
        return UserMessage(parts=tuple(parts))

    def _params(self, req: wire.ChatCompletionRequest, prompt: Prompt, top_logprobs: int | None) -> GenerationParams:
        max_len = self.model.max_model_len
        n_prompt = len(prompt.token_ids)
        requested = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if n_prompt >= max_len:
            raise context_length_exceeded(max_len, n_prompt, None, "messages")
        cap = self.limits.max_tokens or None  # 0: the context length
        if requested is not None and cap is not None and requested > cap:
            # Refused rather than clamped: a silently shorter reply would look like the model's own choice to stop.
            raise invalid_request(f"{param} is {requested}; this server allows at most {cap}.", param)
        if requested is not None and n_prompt + requested > max_len:
            raise context_length_exceeded(max_len, n_prompt, requested, param)
        if requested is None:
            budget = self.limits.default_max_tokens
            if self.model.random_weights:
                budget = min(budget, RANDOM_WEIGHTS_MAX_TOKENS)
            requested = min(budget, max_len - n_prompt, cap or max_len)
        return GenerationParams(
            max_tokens=requested,
            temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
            top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop_token_ids=self.sampling.stop_ids,
            constraint=self.sampling.constraint(),
            logprobs=top_logprobs,
        )
