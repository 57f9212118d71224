"""Wire types of POST /v1/audio/speech (OpenAI `CreateSpeechRequest`, `CreateSpeechResponseStreamEvent`).

Reference: https://platform.openai.com/docs/api-reference/audio/createSpeech (fields in the reference's order).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from glm4voice_api.protocol.chat import VoiceId
from glm4voice_api.protocol.common import EVENT_STREAM, OpenAIBaseModel

MAX_INPUT_CHARS = 4096  # OpenAI's maxLength for `input` and `instructions`
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class SpeechRequest(OpenAIBaseModel):
    model: str
    """The served model id (see /v1/models)."""
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    """The text to speak. The spoken words are exactly this text (the reply's text tokens are forced to it)."""
    voice: str | VoiceId
    """An OpenAI voice name (all map to the model's native voice) or `{"id": ...}` of a custom voice."""
    instructions: str | None = Field(None, max_length=MAX_INPUT_CHARS)
    """Speaking style (emotion, pace, dialect), carried into the prompt."""
    response_format: SpeechFormat = "mp3"
    """Audio format; pcm is headerless 24 kHz mono s16le, opus is Ogg Opus at 48 kHz, the others 24 kHz."""
    speed: float = Field(1.0, ge=0.25, le=4.0)
    """Tempo factor applied to the speech, pitch preserved."""
    stream_format: Literal["audio", "sse"] = "audio"
    """`audio`: the raw file bytes, chunked as they are encoded; `sse`: base64 pieces as server-sent events."""


class SpeechUsage(BaseModel):
    input_tokens: int
    """Prompt tokens (system prompt, instructions and input)."""
    output_tokens: int
    """Generated tokens: the forced text, the audio tokens (12.5 per second of speech at speed 1) and the end."""
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str
    """Base64 of the next bytes of the file in `response_format` (the pieces concatenate to the whole file)."""


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage
    transcript: str
    """Extension: the decoded text tokens of the output, i.e. the words spoken (equal to `input`)."""


SpeechStreamEvent = Annotated[SpeechAudioDelta | SpeechAudioDone, Field(discriminator="type")]

SPEECH_MEDIA_TYPES = ("audio/mpeg", "audio/opus", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")
SPEECH_RESPONSES = {
    200: {
        "description": "The audio file in `response_format` (chunked), or SSE events with `stream_format: sse`",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in SPEECH_MEDIA_TYPES},
            **EVENT_STREAM,
        },
    }
}
"""OpenAPI responses of the route (the Content-Type follows `response_format`)."""
