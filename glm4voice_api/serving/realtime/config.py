"""One Realtime session's settings: defaults, `session.update` patches (GA and beta names), and the session object.

Every patch is validated whole before anything changes (OpenAI's rule: a rejected `session.update` leaves the
session as it was). What GLM-4-Voice cannot do is refused by name rather than ignored: tools, input transcription,
noise reduction, idle timeouts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from glm4voice_api.audio.vad import VADConfig
from glm4voice_api.errors import APIError, invalid_request
from glm4voice_api.protocol import realtime as wire

DEFAULT_TEMPERATURE = 0.8
# semantic_vad's eagerness as a silence duration: how long a pause must last before the turn ends.
_EAGERNESS_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}


def unsupported(what: str, param: str) -> APIError:
    return invalid_request(f"{what} is not supported by this server (GLM-4-Voice).", param, code="unsupported_value")


@dataclass
class TurnDetectionState:
    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None

    def vad_config(self) -> VADConfig:
        silence = self.silence_duration_ms
        if self.type == "semantic_vad":
            silence = _EAGERNESS_MS[self.eagerness or "auto"]
        return VADConfig(
            threshold=self.threshold, prefix_padding_ms=self.prefix_padding_ms, silence_duration_ms=silence
        )

    def render(self) -> dict:
        if self.type == "semantic_vad":
            return {
                "type": "semantic_vad",
                "eagerness": self.eagerness or "auto",
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            }
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "idle_timeout_ms": None,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }


@dataclass
class SessionConfig:
    id: str
    model: str
    expires_at: int
    instructions: str = ""
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    voice: str | dict = "alloy"
    speed: float = 1.0
    turn_detection: TurnDetectionState | None = field(default_factory=TurnDetectionState)
    max_output_tokens: int | str = "inf"
    temperature: float = DEFAULT_TEMPERATURE
    truncation: str = "auto"
    model_aliases: tuple[str, ...] = ()
    """Other names of the same model a client may send (`gpt-realtime`): naming it is no change."""

    def patched(self, patch: wire.SessionPatch, max_tokens_cap: int | None) -> SessionConfig:
        """A copy with `patch` applied; APIError (naming the parameter) if any part of it is refused."""
        new = copy.deepcopy(self)
        given = patch.model_fields_set
        _refuse_unsupported(patch)
        if patch.model is not None and patch.model != self.model and patch.model not in self.model_aliases:
            raise invalid_request(f"The session's model is '{self.model}'; it cannot be changed.", "session.model")
        if patch.instructions is not None:
            new.instructions = patch.instructions
        modalities = patch.output_modalities or patch.modalities
        if modalities is not None:
            if "audio" in modalities:
                new.output_modalities = ["audio"]  # audio comes with its transcript
            else:
                new.output_modalities = ["text"]
        audio_in = patch.audio.input if patch.audio else None
        audio_out = patch.audio.output if patch.audio else None
        if audio_in is not None and audio_in.format is not None:
            new.input_format = _format(audio_in.format)
        elif patch.input_audio_format is not None:
            new.input_format = wire.BETA_FORMATS[patch.input_audio_format]
        if audio_out is not None and audio_out.format is not None:
            new.output_format = _format(audio_out.format)
        elif patch.output_audio_format is not None:
            new.output_format = wire.BETA_FORMATS[patch.output_audio_format]
        voice = (audio_out.voice if audio_out is not None else None) or patch.voice
        if voice is not None:
            new.voice = voice if isinstance(voice, str) else {"id": voice.id}
        speed = (audio_out.speed if audio_out is not None else None) or patch.speed
        if speed is not None:
            new.speed = speed
        if audio_in is not None and "turn_detection" in audio_in.model_fields_set:
            new.turn_detection = _turn_detection(audio_in.turn_detection, self.turn_detection)
        elif "turn_detection" in given:
            new.turn_detection = _turn_detection(patch.turn_detection, self.turn_detection)
        tokens = patch.max_output_tokens if patch.max_output_tokens is not None else patch.max_response_output_tokens
        if tokens is not None:
            if isinstance(tokens, int) and max_tokens_cap and tokens > max_tokens_cap:
                raise invalid_request(
                    f"max_output_tokens is {tokens}; this server allows at most {max_tokens_cap}.",
                    "session.max_output_tokens",
                )
            new.max_output_tokens = tokens
        if patch.temperature is not None:
            new.temperature = patch.temperature
        if isinstance(patch.truncation, str):
            new.truncation = patch.truncation
        return new

    def vad_config(self) -> VADConfig | None:
        return self.turn_detection.vad_config() if self.turn_detection is not None else None

    def render(self, beta: bool) -> dict:
        """The session object of `session.created` / `session.updated`."""
        td = self.turn_detection.render() if self.turn_detection is not None else None
        if beta:
            beta_format = {v: k for k, v in wire.BETA_FORMATS.items()}
            return {
                "id": self.id,
                "object": "realtime.session",
                "model": self.model,
                "modalities": ["text", "audio"] if self.output_modalities == ["audio"] else ["text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": beta_format[self.input_format],
                "output_audio_format": beta_format[self.output_format],
                "input_audio_transcription": None,
                "turn_detection": td,
                "tools": [],
                "tool_choice": "auto",
                "temperature": self.temperature,
                "max_response_output_tokens": self.max_output_tokens,
                "speed": self.speed,
                "expires_at": self.expires_at,
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": self.max_output_tokens,
            "tracing": None,
            "truncation": self.truncation,
            "prompt": None,
            "expires_at": self.expires_at,
            "audio": {
                # No transcription or noise reduction: absent (the schema has no null for them).
                "input": {"format": render_format(self.input_format), "turn_detection": td},
                "output": {"format": render_format(self.output_format), "voice": self.voice, "speed": self.speed},
            },
            "temperature": self.temperature,
        }


def render_format(fmt: str) -> dict:
    return {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}


def _format(fmt: wire.AudioFormat) -> str:
    return fmt.type


def _turn_detection(td: wire.TurnDetection | None, old: TurnDetectionState | None) -> TurnDetectionState | None:
    if td is None:
        return None
    base = TurnDetectionState() if old is None or old.type != td.type else copy.deepcopy(old)
    base.type = td.type
    for name in (
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "create_response",
        "interrupt_response",
        "eagerness",
    ):
        value = getattr(td, name)
        if value is not None:
            setattr(base, name, value)
    return base


def _refuse_unsupported(patch: wire.SessionPatch) -> None:
    if patch.tools:
        raise unsupported("Function calling (tools)", "session.tools")
    audio_in = patch.audio.input if patch.audio else None
    if (audio_in is not None and audio_in.transcription) or patch.input_audio_transcription:
        raise unsupported("Input audio transcription", "session.audio.input.transcription")
    if (audio_in is not None and audio_in.noise_reduction) or patch.input_audio_noise_reduction:
        raise unsupported("Noise reduction", "session.audio.input.noise_reduction")
    for td, param in (
        (audio_in.turn_detection if audio_in else None, "session.audio.input.turn_detection"),
        (patch.turn_detection, "session.turn_detection"),
    ):
        if td is not None and td.idle_timeout_ms is not None:
            raise unsupported("idle_timeout_ms", param + ".idle_timeout_ms")
    if isinstance(patch.truncation, dict):
        raise unsupported("Truncation by retention ratio", "session.truncation")
