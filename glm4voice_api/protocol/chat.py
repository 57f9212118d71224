"""`/v1/chat/completions` wire types (openai-python `types/chat/*`), audio in and out included.

https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, PrivateAttr, model_serializer

from glm4voice_api.protocol.common import EVENT_STREAM, BoundedList, OpenAIBaseModel, Usage

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class InputAudio(OpenAIBaseModel):
    data: str
    """Base64-encoded audio."""
    format: str
    """wav or mp3 as OpenAI; flac, ogg, opus, webm, m4a, aac and pcm16 (24 kHz s16le) too."""


class InputAudioContentPart(OpenAIBaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


UserContentPart = Annotated[TextContentPart | InputAudioContentPart, Field(discriminator="type")]


class SystemMessage(OpenAIBaseModel):
    role: Literal["system", "developer"]
    content: str | BoundedList[TextContentPart]
    name: str | None = None


class UserMessage(OpenAIBaseModel):
    role: Literal["user"]
    content: str | BoundedList[UserContentPart]
    name: str | None = None


class AudioReference(OpenAIBaseModel):
    id: str
    """The id of an earlier audio reply (`message.audio.id`)."""


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"]
    content: str | BoundedList[TextContentPart] | None = None
    audio: AudioReference | None = None
    name: str | None = None
    refusal: str | None = None


class ToolMessage(OpenAIBaseModel):
    role: Literal["tool", "function"]
    content: str | BoundedList[TextContentPart] | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class VoiceId(OpenAIBaseModel):
    id: str


class AudioOutputParams(OpenAIBaseModel):
    voice: str | VoiceId
    """An OpenAI voice name (all map to the model's native voice) or `{"id": ...}` of a custom voice."""
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None


class ChatCompletionRequest(OpenAIBaseModel):
    model: str
    messages: BoundedList[ChatMessage] = Field(min_length=1)
    modalities: BoundedList[Literal["text", "audio"]] | None = None
    """Default ["text"]; ["text", "audio"] returns speech with its transcript."""
    audio: AudioOutputParams | None = None
    """Required when "audio" is in `modalities`."""
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    """Deprecated by OpenAI in favour of max_completion_tokens; both are accepted."""
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    """A signed 64-bit integer (as OpenAI's): the sampler's generator takes no more."""
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    """Up to 4 strings; the text ends before the first of them (text-only replies)."""
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: BoundedList[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: BoundedList[dict] | None = None
    function_call: str | dict | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    return_token_ids: bool = False
    """Extension (as vLLM's): include the prompt's and the reply's token ids in a non-streaming response."""


class ChatCompletionAudio(BaseModel):
    id: str
    data: str
    expires_at: int
    transcript: str


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    audio: ChatCompletionAudio | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class _OmitWhenNone(BaseModel):
    """Extensions (`token_ids`, `prompt_token_ids`) appear only when asked for, as in vLLM's responses: a strict
    client validating against OpenAI's schema never sees them otherwise."""

    _omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler):
        data = handler(self)
        for key in self._omit_when_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Choice(_OmitWhenNone):
    _omit_when_none: ClassVar[tuple[str, ...]] = ("token_ids",)

    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None
    """Extension: the reply's generated ids (with `return_token_ids`)."""


class ChatCompletionResponse(_OmitWhenNone):
    _omit_when_none: ClassVar[tuple[str, ...]] = ("prompt_token_ids",)

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    prompt_token_ids: list[int] | None = None
    """Extension: the prompt's token ids (with `return_token_ids`)."""


class _DropNone(BaseModel):
    """Deltas carry only the keys that changed, as OpenAI's stream does."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class DeltaAudio(_DropNone):
    id: str | None = None
    data: str | None = None
    transcript: str | None = None
    expires_at: int | None = None


class ChoiceDelta(_DropNone):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    audio: DeltaAudio | None = None


class StreamChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    system_fingerprint: str
    _usage_key: bool = PrivateAttr(False)

    def with_usage_key(self) -> ChatCompletionChunk:
        """As OpenAI streams with `include_usage`: every chunk carries `usage`, null except on the last one."""
        self._usage_key = True
        return self

    @model_serializer(mode="wrap")
    def _usage_only_when_asked(self, handler):
        # Without `stream_options.include_usage` OpenAI's chunks have no `usage` key at all.
        data = handler(self)
        if data.get("usage") is None and not self._usage_key:
            data.pop("usage", None)
        return data


CHAT_RESPONSES = {200: {"model": ChatCompletionResponse, "content": EVENT_STREAM, "description": "JSON, or SSE chunks"}}
"""OpenAPI responses of the route: `stream: true` answers `text/event-stream` (ChatCompletionChunk events)."""
