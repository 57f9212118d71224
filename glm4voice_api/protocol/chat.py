"""`/v1/chat/completions` wire types (openai-python `types/chat/*`), audio in and out included.

https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_serializer

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
    stop: str | BoundedList[str] | None = None
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


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: None = None
    token_ids: list[int] | None = None
    """Extension: the reply's generated ids (with `return_token_ids`)."""


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
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
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


CHAT_RESPONSES = {200: {"model": ChatCompletionResponse, "content": EVENT_STREAM, "description": "JSON, or SSE chunks"}}
"""OpenAPI responses of the route: `stream: true` answers `text/event-stream` (ChatCompletionChunk events)."""
