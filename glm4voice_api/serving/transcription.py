"""ServingTranscription: /v1/audio/transcriptions with the chat model itself (GLM-4-Voice has no ASR head).

The user turn is [the audio] + an instruction to repeat exactly what was said; the transcript is the TEXT of the
interleaved reply. The speech the model then produces for those words is not needed, so the engine request is
aborted as soon as the text is over (see `TextEndDetector`), and its budget is bounded by the audio duration.
Every 4xx is decided before the first byte: the audio is decoded and tokenized and the prompt built first.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from glm4voice_vllm import AUDIO_SLOTS, TEXT_SLOTS

from glm4voice_api.audio.decode import upload_format_hint
from glm4voice_api.config import RequestLimits
from glm4voice_api.engine.base import GenerationParams, LLMEngine
from glm4voice_api.errors import APIError, context_length_exceeded, invalid_request, model_not_found
from glm4voice_api.pipeline.audio_input import AudioInput
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.pipeline.sampling import Sampling
from glm4voice_api.protocol import transcription as wire
from glm4voice_api.serving.deadlines import TimeLimits
from glm4voice_api.serving.errors import audio_errors, engine_errors
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.text.prompt import AudioPart, Prompt, PromptBuilder, TextPart, UserMessage
from glm4voice_api.text.tokenizer import GLM4Tokenizer

# Text budget: fast Mandarin is ~5 characters (~5 tokens) a second, English ~3.5 tokens; +1 group of slack. Each
# text token costs 3 reply slots (13 text + 26 audio), so the budget in reply tokens is 3x the text budget.
TEXT_TOKENS_PER_SECOND = 5
INSTRUCTION = (
    "Transcribe the speech above exactly, word for word, in the language it is spoken in. "
    "Do not answer it, translate it or add anything."
)
LANGUAGE_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "ar": "Arabic",
    "hi": "Hindi",
    "nl": "Dutch",
    "tr": "Turkish",
    "vi": "Vietnamese",
    "th": "Thai",
    "id": "Indonesian",
    "pl": "Polish",
    "uk": "Ukrainian",
    "sv": "Swedish",
    "yue": "Cantonese",
}
_LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}$")


class TextEndDetector:
    """Tells when the reply's text is over, from the 13-text/26-audio layout alone.

    The reply starts at a text slot and repeats 13 text slots then 26 audio slots. While the model has text left it
    fills every text slot with text; when the text runs out the last group is cut short and only audio follows. So
    the first audio id at a text slot means the transcript is complete (an immediate audio id: nothing was said).
    """

    def __init__(self, is_audio: Callable[[int], bool]) -> None:
        self.is_audio = is_audio
        self.position = 0

    def text_over(self, token_id: int) -> bool:
        at_text_slot = self.position % (TEXT_SLOTS + AUDIO_SLOTS) < TEXT_SLOTS
        self.position += 1
        return at_text_slot and self.is_audio(token_id)


@dataclass
class TranscriptionPlan:
    """A validated request, ready to run."""

    prompt: Prompt
    params: GenerationParams
    request_id: str
    response_format: str
    duration: float
    language: str | None


@dataclass
class _Done:
    text_ids: list[int] = field(default_factory=list)
    generated: int = 0


class ServingTranscription:
    def __init__(
        self,
        model: ServedModel,
        prompts: PromptBuilder,
        tokenizer: GLM4Tokenizer,
        sampling: Sampling,
        limits: RequestLimits,
        audio_input: AudioInput,
        engine: LLMEngine,
        time_limits: TimeLimits,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.tokenizer = tokenizer
        """Splits the reply into text and audio ids and decodes the text incrementally."""
        self.sampling = sampling
        self.limits = limits
        self.audio_input = audio_input
        self.engine = engine
        """Driven directly (no decoder): the request is aborted as soon as the text is over."""
        self.time_limits = time_limits
        self.metrics = metrics

    @property
    def max_audio_bytes(self) -> int:
        return self.limits.max_audio_bytes

    async def create_transcription(
        self, request: wire.TranscriptionRequest, audio: bytes, request_id: str
    ) -> (
        wire.TranscriptionResponse
        | wire.TranscriptionVerboseResponse
        | str
        | AsyncIterator[wire.TranscriptionStreamEvent]
    ):
        """A response (str for text/srt/vtt), or the stream's events when `request.stream`."""
        async with self.time_limits.preparing():
            plan = await self._plan(request, audio, request_id)
        if request.stream:
            return self._stream(plan)
        return await self._complete(plan)

    async def _plan(self, req: wire.TranscriptionRequest, audio: bytes, request_id: str) -> TranscriptionPlan:
        if req.model != self.model.name:
            raise model_not_found(req.model)
        if req.stream and req.response_format not in ("json", "text"):
            raise APIError(
                f"Unsupported value: 'response_format' does not support '{req.response_format}' when "
                "stream=true. Supported values are: 'json' and 'text'.",
                param="response_format",
                code="unsupported_value",
            )
        if req.timestamp_granularities and req.response_format != "verbose_json":
            raise invalid_request(
                "timestamp_granularities needs response_format 'verbose_json'.", "timestamp_granularities"
            )
        if "word" in req.timestamp_granularities:
            raise APIError(
                "Word timestamps are not supported by this model; use 'segment'.",
                param="timestamp_granularities",
                code="unsupported_value",
            )
        if req.language is not None and not _LANGUAGE_CODE.match(req.language):
            raise invalid_request(
                f"Invalid language '{req.language}': give an ISO-639-1 code such as 'en'.", "language"
            )
        if req.prompt and len(req.prompt) > self.limits.max_text_chars:
            raise invalid_request(f"The prompt is longer than {self.limits.max_text_chars} characters.", "prompt")
        tokens, duration = await self._speech_tokens(audio, upload_format_hint(req.file.filename))
        message = UserMessage(parts=(AudioPart(tuple(tokens)), TextPart(_instruction(req.language, req.prompt))))
        prompt = self.prompts.build([message], input_mode="audio")
        return TranscriptionPlan(
            prompt=prompt,
            params=self._params(prompt, duration, req.temperature or 0.0),
            request_id=request_id,
            response_format=req.response_format,
            duration=duration,
            language=req.language,
        )

    async def _speech_tokens(self, audio: bytes, hint: str | None) -> tuple[list[int], float]:
        async with audio_errors():
            # The context is checked from the decoded length, before tokenizing.
            budget = self.audio_input.budget(self.model.max_model_len)
            waveform = await self.audio_input.decode(audio, hint, "file", budget)
        speech = await self.audio_input.tokenize(waveform)
        self.metrics.audio_in.inc(speech.seconds)
        if not speech.tokens:
            raise APIError("The audio is too short to transcribe.", param="file", code="empty_audio")
        return speech.tokens, speech.seconds

    def _params(self, prompt: Prompt, duration: float, temperature: float) -> GenerationParams:
        max_len = self.model.max_model_len
        n_prompt = len(prompt.token_ids)
        if n_prompt >= max_len:
            raise context_length_exceeded(max_len, n_prompt, None, "file")
        text_budget = math.ceil(TEXT_TOKENS_PER_SECOND * duration) + TEXT_SLOTS
        budget = text_budget * (TEXT_SLOTS + AUDIO_SLOTS) // TEXT_SLOTS
        return GenerationParams(
            max_tokens=min(budget, max_len - n_prompt),
            temperature=temperature,
            top_p=1.0,
            stop_token_ids=self.sampling.stop_ids,
            constraint=self.sampling.constraint(),
        )

    async def _pieces(self, plan: TranscriptionPlan) -> AsyncIterator[str | _Done]:
        """Transcript pieces as they are generated, then a `_Done`; stops the engine once the text is over."""
        ids = self.tokenizer.ids
        text_decoder = self.tokenizer.incremental_decoder()
        detector = TextEndDetector(ids.is_audio)
        done = _Done()
        stream = self.engine.generate(plan.prompt.token_ids, plan.params, plan.request_id)
        try:
            async for delta in stream:
                done.generated += len(delta.token_ids)
                new: list[int] = []
                over = False
                for token_id in delta.token_ids:
                    if token_id in ids.stop_ids or detector.text_over(token_id):
                        over = True
                        break
                    if not ids.is_audio(token_id):
                        new.append(token_id)
                done.text_ids += new
                if new and (piece := text_decoder.feed(new)):
                    yield piece
                if over:
                    break
        finally:
            await stream.aclose()  # before the engine finished (the early stop, a disconnect): aborts the request
        if tail := text_decoder.flush():
            yield tail
        yield done

    def _usage(self, plan: TranscriptionPlan, done: _Done) -> wire.TranscriptionUsage:
        n_prompt = len(plan.prompt.token_ids)
        return wire.TranscriptionUsage(
            input_tokens=n_prompt,
            output_tokens=done.generated,
            total_tokens=n_prompt + done.generated,
            input_token_details=wire.InputTokenDetails(
                audio_tokens=plan.prompt.audio_tokens, text_tokens=plan.prompt.text_tokens
            ),
        )

    async def _complete(
        self, plan: TranscriptionPlan
    ) -> wire.TranscriptionResponse | wire.TranscriptionVerboseResponse | str:
        pieces: list[str] = []
        done = _Done()
        async with engine_errors():
            async for item in self.time_limits.bounded(self._pieces(plan)):
                if isinstance(item, _Done):
                    done = item
                else:
                    pieces.append(item)
        text = "".join(pieces).strip()
        fmt = plan.response_format
        if fmt == "json":
            return wire.TranscriptionResponse(text=text, usage=self._usage(plan, done))
        if fmt == "verbose_json":
            return _verbose(plan, text, done.text_ids)
        if fmt in ("srt", "vtt"):
            return _subtitles(fmt, text, plan.duration)
        return text

    async def _stream(self, plan: TranscriptionPlan) -> AsyncIterator[wire.TranscriptionStreamEvent]:
        pieces: list[str] = []
        async with engine_errors():
            async for item in self.time_limits.bounded(self._pieces(plan), stream=True):
                if isinstance(item, _Done):
                    text = "".join(pieces).strip()
                    yield wire.TranscriptTextDoneEvent(text=text, usage=self._usage(plan, item))
                    continue
                piece = item if pieces else item.lstrip()  # the done text is stripped; so is the first delta
                if piece:
                    pieces.append(piece)
                    yield wire.TranscriptTextDeltaEvent(delta=piece)


def _instruction(language: str | None, prompt: str | None) -> str:
    text = INSTRUCTION
    if language:
        text += f" The speech is in {LANGUAGE_NAMES.get(language.lower(), language)}."
    if prompt:
        text += f' For names and spelling, the text just before it was: "{prompt}"'
    return text


def _verbose(plan: TranscriptionPlan, text: str, text_ids: list[int]) -> wire.TranscriptionVerboseResponse:
    duration = round(plan.duration, 3)
    raw = text.encode()
    segments = (
        [
            wire.TranscriptionSegment(
                id=0,
                seek=0,
                start=0.0,
                end=duration,
                text=text,
                tokens=text_ids,
                temperature=plan.params.temperature,
                avg_logprob=0.0,
                compression_ratio=len(raw) / len(zlib.compress(raw)),
                no_speech_prob=0.0,
            )
        ]
        if text
        else []
    )
    language = LANGUAGE_NAMES.get(plan.language.lower(), plan.language).lower() if plan.language else "unknown"
    return wire.TranscriptionVerboseResponse(
        language=language,
        duration=duration,
        text=text,
        segments=segments,
        usage=wire.DurationUsage(seconds=duration),
    )


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _subtitles(fmt: str, text: str, duration: float) -> str:
    """One cue from 0 to the end of the audio (the model gives no timestamps)."""
    if fmt == "vtt":
        cue = f"{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n" if text else ""
        return "WEBVTT\n\n" + cue
    return f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n" if text else ""
