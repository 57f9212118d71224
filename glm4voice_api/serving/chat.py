"""ServingChat: validates a chat request, builds the GLM-4-Voice prompt and runs the turn.

Every 4xx is decided before the first byte: `create_chat_completion` validates (audio decoded and tokenized,
audio ids and voices resolved) and only then returns a response or an async iterator of chunks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError, invalid_request, model_not_found, not_found
from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.pipeline.turn import Turn
from glm4voice_api.protocol import chat as wire
from glm4voice_api.serving.chat_output import ChatPlan, complete, stream
from glm4voice_api.serving.errors import audio_errors
from glm4voice_api.serving.voices import resolve_voice
from glm4voice_api.text.prompt import AssistantMessage, AudioPart, Prompt, TextPart, UserMessage

# Sampling defaults of the model (its generation config and the official servers), used when a request gives none.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.8
RANDOM_WEIGHTS_MAX_TOKENS = 195  # 5 cycles of 13 text + 26 audio: random weights never end a reply by themselves


def _text_of(content: str | list[wire.TextContentPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


def context_length_error(max_len: int, n_prompt: int, requested: int | None, param: str) -> APIError:
    if requested is None:
        message = (f"This model's maximum context length is {max_len} tokens. However, your messages resulted in "
                   f"{n_prompt} tokens. Please reduce the length of the messages.")  # fmt: skip
    else:
        message = (f"This model's maximum context length is {max_len} tokens. However, you requested "
                   f"{n_prompt + requested} tokens ({n_prompt} in the messages, {requested} in the completion). "
                   "Please reduce the length of the messages or completion.")  # fmt: skip
    return APIError(message, param=param, code="context_length_exceeded")


class ServingChat:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.model_name = runtime.settings.served_model_name

    async def create_chat_completion(
        self, request: wire.ChatCompletionRequest, request_id: str, tenant: str
    ) -> wire.ChatCompletionResponse | AsyncIterator[wire.ChatCompletionChunk]:
        plan = await self._plan(request, request_id, tenant)
        turn = Turn(self.rt.engine, self.rt.tokenizer, plan.prompt, plan.params, request_id)
        if plan.stream:
            return stream(self.rt, turn, plan)
        return await complete(self.rt, turn, plan)

    async def _plan(self, req: wire.ChatCompletionRequest, request_id: str, tenant: str) -> ChatPlan:
        if req.model != self.model_name:
            raise model_not_found(req.model)
        if req.n not in (None, 1):
            raise invalid_request("Only n=1 is supported.", param="n")
        if req.stop:
            raise invalid_request("Stop sequences are not supported by this model.", param="stop")
        audio_out = "audio" in (req.modalities or ["text"])
        voice = None
        if audio_out:
            if req.audio is None:
                raise invalid_request(
                    "The 'audio' parameter (voice and format) is required when 'audio' is in modalities.", "audio"
                )
            if req.stream and req.audio.format != "pcm16":
                raise APIError(
                    f"Unsupported value: 'audio.format' does not support '{req.audio.format}' when stream=true. "
                    "Supported values are: 'pcm16'.", param="audio.format", code="unsupported_value",
                )  # fmt: skip
            voice = await resolve_voice(self.rt, req.audio.voice, tenant, param="audio.voice")
        system, messages = await self._conversation(req, tenant)
        prompt = self.rt.prompts.build(messages, system=system)
        now = int(time.time())
        return ChatPlan(
            prompt=prompt,
            params=self._params(req, prompt),
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            created=now,
            response_id=f"chatcmpl-{request_id}",
            model=self.model_name,
            tenant=tenant,
            audio_format=req.audio.format if audio_out and req.audio else None,
            voice=voice,
            audio_id=f"audio_{uuid.uuid4().hex}" if audio_out else None,
            expires_at=now + self.rt.settings.audio_ttl_seconds,
            return_token_ids=req.return_token_ids,
        )

    async def _conversation(self, req: wire.ChatCompletionRequest, tenant: str) -> tuple[str | None, list]:
        system_parts: list[str] = []
        messages: list[UserMessage | AssistantMessage] = []
        for i, m in enumerate(req.messages):
            if isinstance(m, wire.SystemMessage):
                system_parts.append(_text_of(m.content))
            elif isinstance(m, wire.UserMessage):
                messages.append(await self._user_message(m, i))
            elif isinstance(m, wire.AssistantMessage):
                messages.append(await self._assistant_message(m, i, tenant))
            else:
                raise invalid_request("Tool and function messages are not supported.", f"messages[{i}].role")
        if not messages or not isinstance(messages[-1], UserMessage):
            raise invalid_request("The last message must be a user message.", "messages")
        system = "\n".join(p for p in system_parts if p) or None
        return system, messages

    async def _assistant_message(self, m: wire.AssistantMessage, index: int, tenant: str) -> AssistantMessage:
        if m.audio is None:
            return AssistantMessage(text=_text_of(m.content))
        stored = await self.rt.store.get_audio(tenant, m.audio.id, int(time.time()))
        if stored is None:  # another tenant's id reads exactly as a nonexistent one
            raise not_found(
                f"Audio with id '{m.audio.id}' was not found or has expired.", f"messages[{index}].audio.id",
                code="audio_not_found",
            )  # fmt: skip
        return AssistantMessage(token_ids=tuple(stored.token_ids))

    async def _user_message(self, m: wire.UserMessage, index: int) -> UserMessage:
        limit = self.rt.settings.request_limits.max_text_chars
        raw_parts = [wire.TextContentPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        parts: list[TextPart | AudioPart] = []
        for j, part in enumerate(raw_parts):
            if isinstance(part, wire.TextContentPart):
                if len(part.text) > limit:
                    raise invalid_request(f"Message text is longer than {limit} characters.", f"messages[{index}]")
                parts.append(TextPart(part.text))
                continue
            param = f"messages[{index}].content[{j}].input_audio"
            async with audio_errors():
                tokens = await self.rt.audio_input.tokens_from_base64(
                    part.input_audio.data, part.input_audio.format, param
                )
            parts.append(AudioPart(tuple(tokens)))
        return UserMessage(parts=tuple(parts))

    def _params(self, req: wire.ChatCompletionRequest, prompt: Prompt) -> GenerationParams:
        max_len = self.rt.engine.info.max_model_len
        n_prompt = len(prompt.token_ids)
        requested = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if n_prompt >= max_len:
            raise context_length_error(max_len, n_prompt, None, "messages")
        cap = self.rt.settings.request_limits.max_tokens or None
        if requested is not None and cap is not None and requested > cap:
            # Refused rather than clamped: a silently shorter reply would look like the model's own choice to stop.
            raise invalid_request(f"{param} is {requested}; this server allows at most {cap}.", param)
        if requested is not None and n_prompt + requested > max_len:
            raise context_length_error(max_len, n_prompt, requested, param)
        if requested is None:
            budget = self.rt.settings.request_limits.default_max_tokens
            if self.rt.random_weights:
                budget = min(budget, RANDOM_WEIGHTS_MAX_TOKENS)
            requested = min(budget, max_len - n_prompt, cap or max_len)
        return GenerationParams(
            max_tokens=requested,
            temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
            top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop_token_ids=self.rt.tokenizer.ids.stop_ids,
            constraint=self.rt.interleave_constraint(),
        )
