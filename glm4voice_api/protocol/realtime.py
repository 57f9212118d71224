"""Realtime API wire types (openai-python `types/realtime/*`, GA; the beta names of `types/beta/realtime/*` too).

Client events are parsed into these models; server events are plain dicts built in `serving/realtime/events.py`
(tests validate them against the official OpenAPI schemas). Unknown fields are accepted and ignored, as
everywhere in this API: SDKs send new fields first.

https://platform.openai.com/docs/api-reference/realtime-client-events
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from glm4voice_api.protocol.chat import VoiceId
from glm4voice_api.protocol.common import BoundedList, OpenAIBaseModel


class _Strict(OpenAIBaseModel):
    """Types as the schema says: `"1"` is no number and `1` no boolean (OpenAI refuses both). Unknown fields are
    still accepted."""

    model_config = ConfigDict(strict=True, extra="allow")


GAFormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
BetaFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
BETA_FORMATS: dict[str, GAFormatType] = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
Modality = Literal["text", "audio"]
MaxTokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]


class AudioFormat(_Strict):
    type: GAFormatType
    rate: Literal[24000] | None = None
    """Only `audio/pcm` has a rate, and only 24000."""


class TurnDetection(_Strict):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = Field(None, ge=5000, le=30_000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    """semantic_vad: how soon a pause ends the turn (mapped to a silence duration here)."""


class AudioInputConfig(_Strict):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = None
    """Explicit null turns detection off (commit by hand); absent leaves it as it is."""
    transcription: dict | None = None
    noise_reduction: dict | None = None


class AudioOutputConfig(_Strict):
    format: AudioFormat | None = None
    voice: str | VoiceId | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class AudioConfig(_Strict):
    input: AudioInputConfig | None = None
    output: AudioOutputConfig | None = None


class SessionPatch(_Strict):
    """`session.update`'s `session` (GA shape), with the beta names accepted as aliases."""

    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = Field(None, max_length=32_768)
    output_modalities: BoundedList[Modality] | None = Field(None, min_length=1)
    audio: AudioConfig | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    """Not in the GA schema (the beta had it); sampling temperature of every response."""
    tools: BoundedList[dict] | None = None
    tool_choice: str | dict | None = None
    truncation: Literal["auto", "disabled"] | dict | None = None
    tracing: str | dict | None = None
    include: BoundedList[str] | None = None
    # beta names
    modalities: BoundedList[Modality] | None = Field(None, min_length=1)
    voice: str | VoiceId | None = None
    input_audio_format: BetaFormat | None = None
    output_audio_format: BetaFormat | None = None
    turn_detection: TurnDetection | None = None
    input_audio_transcription: dict | None = None
    input_audio_noise_reduction: dict | None = None
    max_response_output_tokens: MaxTokens | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class _ClientEvent(_Strict):
    event_id: str | None = Field(None, max_length=512)


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"]
    session: SessionPatch


class InputAudioBufferAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str
    """Base64 audio in the session's input format."""


class InputAudioBufferCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioBufferClear(_ClientEvent):
    type: Literal["output_audio_buffer.clear"]
    response_id: str | None = None


class ContentIn(_Strict):
    type: Literal["input_text", "input_audio", "output_text", "output_audio", "text", "audio", "item_reference"]
    text: str | None = Field(None, max_length=32_768)
    audio: str | None = None
    """Base64 audio in the session's input format (user items)."""
    transcript: str | None = None
    id: str | None = None


class ItemIn(_Strict):
    id: str | None = Field(None, max_length=64)
    type: Literal["message", "function_call", "function_call_output", "item_reference"] = "message"
    object: Literal["realtime.item"] | None = None
    role: Literal["user", "assistant", "system"] | None = None
    status: str | None = None
    content: BoundedList[ContentIn] = Field(default_factory=list)


class ConversationItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: ItemIn


class ConversationItemRetrieve(_ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemDelete(_ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemTruncate(_ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


class ResponseAudioOutput(_Strict):
    format: AudioFormat | None = None
    voice: str | VoiceId | None = None


class ResponseAudio(_Strict):
    output: ResponseAudioOutput | None = None


class ResponseParams(_Strict):
    """`response.create`'s `response`: overrides for this response only (GA names, beta aliases)."""

    instructions: str | None = Field(None, max_length=32_768)
    output_modalities: BoundedList[Modality] | None = Field(None, min_length=1)
    audio: ResponseAudio | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    conversation: Literal["auto", "none"] | str | None = None
    metadata: dict[str, str] | None = None
    input: BoundedList[dict] | None = None
    tools: BoundedList[dict] | None = None
    tool_choice: str | dict | None = None
    # beta names
    modalities: BoundedList[Modality] | None = Field(None, min_length=1)
    voice: str | VoiceId | None = None
    output_audio_format: BetaFormat | None = None
    max_response_output_tokens: MaxTokens | None = None


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | OutputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemRetrieve
    | ConversationItemDelete
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)


class ExpiresAfter(_Strict):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(600, ge=10, le=7200)


class ClientSecretRequest(_Strict):
    """`POST /v1/realtime/client_secrets`."""

    expires_after: ExpiresAfter | None = None
    session: SessionPatch | None = None


class ClientSecretResponse(_Strict):
    value: str
    expires_at: int
    session: dict
