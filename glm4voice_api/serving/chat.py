"""ServingChat: validates a chat request, builds the GLM-4-Voice prompt, runs the turn, shapes OpenAI objects.

Every 4xx is decided before the first byte: `create_chat_completion` validates and only then returns either a
response or an async iterator of chunks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError, invalid_request, model_not_found
from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.pipeline.turn import AudioTokensDelta, TranscriptDelta, Turn, TurnDone, TurnUsage
from glm4voice_api.protocol import chat as wire
from glm4voice_api.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from glm4voice_api.serving.errors import audio_errors, engine_errors
from glm4voice_api.text.prompt import AssistantMessage, AudioPart, Prompt, TextPart, UserMessage

# Sampling defaults of the model (its generation config and the official servers), used when a request gives none.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.8
RANDOM_WEIGHTS_MAX_TOKENS = 195  # 5 cycles of 13 text + 26 audio: random weights never end a reply by themselves


def usage_of(u: TurnUsage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(
            audio_tokens=u.prompt_audio_tokens,
            text_tokens=u.prompt_tokens - u.prompt_audio_tokens,
            cached_tokens=u.cached_tokens,
        ),
        completion_tokens_details=CompletionTokensDetails(
            audio_tokens=u.completion_audio_tokens, text_tokens=u.completion_text_tokens
        ),
    )


def _text_of(content: str | list[wire.TextContentPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


@dataclass
class ChatTurnPlan:
    """A validated request, ready to run."""

    prompt: Prompt
    params: GenerationParams
    stream: bool
    include_usage: bool
    created: int
    response_id: str


class ServingChat:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.model_name = runtime.settings.served_model_name

    async def create_chat_completion(
        self, request: wire.ChatCompletionRequest, request_id: str
    ) -> wire.ChatCompletionResponse | AsyncIterator[wire.ChatCompletionChunk]:
        plan = await self._plan(request, request_id)
        turn = Turn(self.rt.engine, self.rt.tokenizer, plan.prompt, plan.params, request_id)
        if plan.stream:
            return self._stream(turn, plan)
        return await self._complete(turn, plan)

    async def _plan(self, req: wire.ChatCompletionRequest, request_id: str) -> ChatTurnPlan:
        if req.model != self.model_name:
            raise model_not_found(req.model)
        if req.n not in (None, 1):
            raise invalid_request("Only n=1 is supported.", param="n")
        if req.stop:
            raise invalid_request("Stop sequences are not supported by this model.", param="stop")
        modalities = req.modalities or ["text"]
        if "audio" in modalities:
            raise invalid_request("Audio output is not available on this server yet.", param="modalities")
        system, messages = await self._conversation(req)
        prompt = self.rt.prompts.build(messages, system=system)
        params = self._params(req, prompt)
        return ChatTurnPlan(
            prompt=prompt,
            params=params,
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            created=int(time.time()),
            response_id=f"chatcmpl-{request_id}",
        )

    async def _conversation(self, req: wire.ChatCompletionRequest) -> tuple[str | None, list]:
        limit = self.rt.settings.limits.max_text_chars
        system_parts: list[str] = []
        messages: list[UserMessage | AssistantMessage] = []
        for i, m in enumerate(req.messages):
            if isinstance(m, wire.SystemMessage):
                system_parts.append(_text_of(m.content))
            elif isinstance(m, wire.UserMessage):
                messages.append(await self._user_message(m, i))
            elif isinstance(m, wire.AssistantMessage):
                if m.audio is not None:
                    raise invalid_request(f"Audio with id '{m.audio.id}' was not found.", f"messages[{i}].audio.id")
                messages.append(AssistantMessage(text=_text_of(m.content)))
            else:
                raise invalid_request("Tool and function messages are not supported.", f"messages[{i}].role")
        for i, m in enumerate(messages):
            for part in getattr(m, "parts", ()):
                if isinstance(part, TextPart) and len(part.text) > limit:
                    raise invalid_request(f"Message text is longer than {limit} characters.", f"messages[{i}]")
        if not messages or not isinstance(messages[-1], UserMessage):
            raise invalid_request("The last message must be a user message.", "messages")
        system = "\n".join(p for p in system_parts if p) or None
        return system, messages

    async def _user_message(self, m: wire.UserMessage, index: int) -> UserMessage:
        if isinstance(m.content, str):
            return UserMessage(parts=(TextPart(m.content),))
        parts = []
        for j, part in enumerate(m.content):
            if isinstance(part, wire.TextContentPart):
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
        if n_prompt >= max_len:
            raise APIError(
                f"This model's maximum context length is {max_len} tokens. However, your messages resulted in "
                f"{n_prompt} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        requested = req.max_completion_tokens or req.max_tokens
        if requested is not None and n_prompt + requested > max_len:
            raise APIError(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{n_prompt + requested} tokens ({n_prompt} in the messages, {requested} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
                code="context_length_exceeded",
            )
        if requested is None:
            budget = self.rt.settings.limits.default_max_tokens
            if self.rt.random_weights:
                budget = min(budget, RANDOM_WEIGHTS_MAX_TOKENS)
            requested = min(budget, max_len - n_prompt)
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

    async def _complete(self, turn: Turn, plan: ChatTurnPlan) -> wire.ChatCompletionResponse:
        done: TurnDone | None = None
        async with engine_errors():
            async for event in turn.events():
                if isinstance(event, TurnDone):
                    done = event
        assert done is not None
        return wire.ChatCompletionResponse(
            id=plan.response_id,
            created=plan.created,
            model=self.model_name,
            choices=[wire.Choice(message=wire.ChatCompletionMessage(content=done.transcript),
                                 finish_reason=done.finish_reason)],
            usage=usage_of(done.usage),
        )  # fmt: skip

    async def _stream(self, turn: Turn, plan: ChatTurnPlan) -> AsyncIterator[wire.ChatCompletionChunk]:
        def chunk(delta: wire.ChoiceDelta, finish_reason: str | None = None) -> wire.ChatCompletionChunk:
            return wire.ChatCompletionChunk(
                id=plan.response_id,
                created=plan.created,
                model=self.model_name,
                choices=[wire.StreamChoice(delta=delta, finish_reason=finish_reason)],
            )

        yield chunk(wire.ChoiceDelta(role="assistant", content=""))
        async with engine_errors():
            async for event in turn.events():
                if isinstance(event, TranscriptDelta):
                    yield chunk(wire.ChoiceDelta(content=event.text))
                elif isinstance(event, AudioTokensDelta):
                    continue
                elif isinstance(event, TurnDone):
                    yield chunk(wire.ChoiceDelta(), finish_reason=event.finish_reason)
                    if plan.include_usage:
                        yield wire.ChatCompletionChunk(
                            id=plan.response_id, created=plan.created, model=self.model_name, choices=[],
                            usage=usage_of(event.usage),
                        )  # fmt: skip
