"""`/v1/audio/transcriptions` wire types (openai-python `types/audio/transcription*.py`).

https://platform.openai.com/docs/api-reference/audio/createTranscription
"""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, Field, model_serializer

from glm4voice_api.protocol.common import EVENT_STREAM, OpenAIBaseModel

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionRequest(OpenAIBaseModel):
    """The multipart form; unknown fields (`chunking_strategy`, ...) are accepted and ignored."""

    file: UploadFile
    """The audio file: flac, mp3, mp4, m4a, ogg, opus, wav, webm or aac (the content is probed, not the name)."""
    model: str
    """The served model id (`/v1/models`)."""
    language: str | None = None
    """ISO-639-1 code of the spoken language; a hint written into the instruction."""
    prompt: str | None = None
    """Text that precedes the audio (spelling, names, style); a hint written into the instruction."""
    response_format: ResponseFormat = "json"
    """json, text, srt, verbose_json or vtt."""
    temperature: float | None = Field(None, ge=0, le=1)
    """Sampling temperature; 0 (the default) decodes greedily."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )
    """verbose_json only; `segment` is supported (the pauses voice activity detection finds), `word` is not."""
    include: list[Literal["logprobs"]] = Field(default_factory=list, alias="include[]")
    """`logprobs`: the transcript's text tokens with their logprobs (json only, as OpenAI)."""
    stream: bool | None = False
    """Stream `transcript.text.delta` events, then one `transcript.text.done` (json and text formats only)."""


class InputTokenDetails(BaseModel):
    audio_tokens: int
    text_tokens: int


class TranscriptionUsage(BaseModel):
    """Token usage: input = the whole prompt (audio + instruction), output = every id generated (text and audio)."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails


class DurationUsage(BaseModel):
    """verbose_json's usage, as OpenAI's (`TranscriptionVerbose.usage`)."""

    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionResponse(BaseModel):
    text: str
    usage: TranscriptionUsage
    logprobs: list[TranscriptLogprob] | None = None
    """With `include[]=logprobs` only (absent otherwise, as OpenAI)."""

    @model_serializer(mode="wrap")
    def _logprobs_only_when_asked(self, handler):
        data = handler(self)
        if data.get("logprobs") is None:
            data.pop("logprobs", None)
        return data


class TranscriptionSegment(BaseModel):
    """One stretch of speech between pauses (Silero VAD), transcribed on its own: its times are the VAD's."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    """The mean logprob of the segment's text tokens."""
    compression_ratio: float
    no_speech_prob: float
    """1 - the segment's mean speech probability (Silero VAD)."""


class TranscriptionVerboseResponse(BaseModel):
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str
    """The `language` hint as an English name ("english"), or "unknown" when none was given; "english" for a
    translation (the output's language, as OpenAI)."""
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: DurationUsage


class TranscriptTextDeltaEvent(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDoneEvent(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: TranscriptionUsage


class TranslationRequest(OpenAIBaseModel):
    """The multipart form of `POST /v1/audio/translations`: speech in any language -> English text."""

    file: UploadFile
    model: str
    prompt: str | None = None
    """Text in English that precedes the audio (names, spelling, style); a hint written into the instruction."""
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, ge=0, le=1)


class TranslationResponse(BaseModel):
    text: str


TranscriptionStreamEvent = TranscriptTextDeltaEvent | TranscriptTextDoneEvent

TRANSCRIPTION_RESPONSES = {
    200: {
        "model": TranscriptionResponse | TranscriptionVerboseResponse,
        "content": {"text/plain": {"schema": {"type": "string"}}, **EVENT_STREAM},
        "description": "json/verbose_json, text/srt/vtt as text/plain, or SSE events with `stream: true`",
    }
}
"""OpenAPI responses of the route."""

TRANSLATION_RESPONSES = {
    200: {
        "model": TranslationResponse | TranscriptionVerboseResponse,
        "content": {"text/plain": {"schema": {"type": "string"}}},
        "description": "json/verbose_json, or text/srt/vtt as text/plain",
    }
}
