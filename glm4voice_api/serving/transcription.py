"""ServingTranscription: /v1/audio/transcriptions and /v1/audio/translations with the chat model itself
(GLM-4-Voice has no ASR head).

The audio is cut at pauses by voice activity detection (Silero VAD, `audio/vad.py`, the Realtime API's detector),
so segments carry real start/end times and no segment is longer than `MAX_SEGMENT_S`. Each segment is one user turn:
[its audio] + an instruction to repeat exactly what was said (or to translate it into English); its transcript is
the TEXT of the interleaved reply. The speech the model then produces for those words is not needed, so the engine
request is aborted as soon as the text is over (see `TextEndDetector`), and its budget is bounded by the segment's
duration. Every 4xx is decided before the first byte: the audio is decoded, segmented and tokenized and the prompts
built first.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import numpy as np
from glm4voice_vllm import AUDIO_SLOTS, TEXT_SLOTS

from glm4voice_api.audio.decode import upload_format_hint
from glm4voice_api.audio.vad import FRAME_MS, VoiceActivityDetector, speech_probabilities, split_on_pauses
from glm4voice_api.config import RequestLimits
from glm4voice_api.engine.base import GenerationParams, LLMEngine
from glm4voice_api.errors import APIError, context_length_exceeded, invalid_request
from glm4voice_api.pipeline.audio_input import TOKENIZER_RATE, AudioInput
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.pipeline.sampling import Sampling
from glm4voice_api.protocol import transcription as wire
from glm4voice_api.serving.deadlines import TimeLimits
from glm4voice_api.serving.errors import audio_errors, engine_errors
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.model_names import Route, check_model
from glm4voice_api.serving.transcript_formats import (
    SegmentText,
    detect_language,
    join_texts,
    subtitles,
    verbose,
    wire_logprobs,
)
from glm4voice_api.text.prompt import AudioPart, Prompt, PromptBuilder, TextPart, UserMessage
from glm4voice_api.text.tokenizer import GLM4Tokenizer

# Text budget: fast Mandarin is ~5 characters (~5 tokens) a second, English ~3.5 tokens; +1 group of slack. Each
# text token costs 3 reply slots (13 text + 26 audio), so the budget in reply tokens is 3x the text budget.
TEXT_TOKENS_PER_SECOND = 5
INSTRUCTION = (
    "Transcribe the speech above exactly, word for word, in the language it is spoken in. "
    "Do not answer it, translate it or add anything."
)
TRANSLATE_INSTRUCTION = (
    "Translate the speech above into English. Give only the English translation: do not answer it or add anything."
)
UNSUPPORTED_FIELDS = {
    "known_speaker_names": "there is no diarization.",
    "known_speaker_references": "there is no diarization.",
    "keywords": "the model cannot be biased towards keywords; give them in 'prompt'.",
    "languages": "give one ISO-639-1 code in 'language'.",
}
MAX_SEGMENT_S = 30.0  # Whisper's window; a longer stretch of speech is cut at its least speech-like frame
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


@dataclass(frozen=True)
class Job:
    """A transcription or translation request, as one shape."""

    task: str  # "transcribe" | "translate"
    model: str
    filename: str | None
    prompt: str | None
    response_format: str
    temperature: float
    language: str | None = None
    stream: bool = False
    granularities: tuple[str, ...] = ()
    logprobs: bool = False
    unsupported: tuple[str, ...] = ()
    """OpenAI form fields given that would change the answer and that this model cannot honour."""

    @classmethod
    def of(cls, req: wire.TranscriptionRequest | wire.TranslationRequest) -> Job:
        if isinstance(req, wire.TranslationRequest):
            return cls("translate", req.model, req.file.filename, req.prompt, req.response_format, req.temperature or 0)
        return cls(
            "transcribe",
            req.model,
            req.file.filename,
            req.prompt,
            req.response_format,
            req.temperature or 0.0,
            req.language,
            bool(req.stream),
            tuple(req.timestamp_granularities),
            "logprobs" in req.include,
            tuple(k for k in (req.model_extra or {}) if k.removesuffix("[]") in UNSUPPORTED_FIELDS),
        )


@dataclass
class SegmentPlan:
    start: float
    end: float
    speech_prob: float
    prompt: Prompt
    params: GenerationParams


@dataclass
class TranscriptionPlan:
    """A validated request, ready to run: one engine request per segment."""

    job: Job
    segments: list[SegmentPlan]
    request_id: str
    duration: float


def find_segments(waveform: np.ndarray) -> list[tuple[float, float, float]]:
    """(start, end, mean speech probability) of each stretch of speech (blocking: run in a thread). No speech
    found: the whole file, cut into windows (the model may still hear what the detector did not)."""
    duration = len(waveform) / TOKENIZER_RATE
    detector = VoiceActivityDetector.shared()
    spans = split_on_pauses(waveform, detector=detector, max_segment_s=MAX_SEGMENT_S)
    probs = speech_probabilities(detector, waveform)
    if not spans:
        edges = [*np.arange(0.0, duration, MAX_SEGMENT_S), duration]
        spans = [(a, b) for a, b in itertools.pairwise(edges) if b > a] or [(0.0, duration)]
    frame_s = FRAME_MS / 1000
    out = []
    for a, b in spans:
        window = probs[int(a / frame_s) : max(int(a / frame_s) + 1, int(b / frame_s))]
        out.append((float(a), float(b), float(window.mean()) if len(window) else 0.0))
    return out


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
        self, request: wire.TranscriptionRequest | wire.TranslationRequest, audio: bytes, request_id: str
    ) -> (
        wire.TranscriptionResponse
        | wire.TranslationResponse
        | wire.TranscriptionVerboseResponse
        | str
        | AsyncIterator[wire.TranscriptionStreamEvent]
    ):
        """A response (str for text/srt/vtt), or the stream's events when `request.stream`. A `TranslationRequest`
        is a translation into English, with the same formats."""
        job = Job.of(request)
        async with self.time_limits.preparing():
            plan = await self._plan(job, audio, request_id)
        if job.stream:
            return self._stream(plan)
        return await self._complete(plan)

    def _check(self, job: Job) -> None:
        route: Route = "translation" if job.task == "translate" else "transcription"
        check_model(self.model, job.model, route)
        for field in job.unsupported:
            name = field.removesuffix("[]")
            raise APIError(
                f"'{name}' is not supported: {UNSUPPORTED_FIELDS[name]}", param=name, code="unsupported_parameter"
            )
        if job.stream and job.response_format not in ("json", "text"):
            raise APIError(
                f"Unsupported value: 'response_format' does not support '{job.response_format}' when "
                "stream=true. Supported values are: 'json' and 'text'.",
                param="response_format",
                code="unsupported_value",
            )
        if job.granularities and job.response_format != "verbose_json":
            raise invalid_request(
                "timestamp_granularities needs response_format 'verbose_json'.", "timestamp_granularities"
            )
        if "word" in job.granularities:
            raise APIError(
                "Word timestamps are not supported by this model (it gives no word alignment); use 'segment'.",
                param="timestamp_granularities",
                code="unsupported_value",
            )
        if job.logprobs and job.response_format != "json":
            raise APIError(
                "include[]=logprobs needs response_format 'json' (as OpenAI).",
                param="include",
                code="unsupported_value",
            )
        if job.language is not None and not _LANGUAGE_CODE.match(job.language):
            raise invalid_request(
                f"Invalid language '{job.language}': give an ISO-639-1 code such as 'en'.", "language"
            )
        if job.prompt and len(job.prompt) > self.limits.max_text_chars:
            raise invalid_request(f"The prompt is longer than {self.limits.max_text_chars} characters.", "prompt")

    async def _plan(self, job: Job, audio: bytes, request_id: str) -> TranscriptionPlan:
        self._check(job)
        async with audio_errors():
            waveform = await self.audio_input.decode(audio, upload_format_hint(job.filename), "file")
        spans = await asyncio.to_thread(find_segments, waveform)
        speech = await asyncio.gather(
            *(
                self.audio_input.tokenize(waveform[int(a * TOKENIZER_RATE) : int(b * TOKENIZER_RATE)])
                for a, b, _ in spans
            )
        )
        self.metrics.audio_in.inc(len(waveform) / TOKENIZER_RATE)
        instruction = _instruction(job)
        segments = []
        for (start, end, prob), s in zip(spans, speech, strict=True):
            if not s.tokens:
                continue  # a sliver too short for one speech token
            message = UserMessage(parts=(AudioPart(tuple(s.tokens)), TextPart(instruction)))
            prompt = self.prompts.build([message], input_mode="audio")
            params = self._params(prompt, end - start, job.temperature)
            if job.logprobs or job.response_format == "verbose_json":
                params = replace(params, logprobs=0)  # each text token's own logprob (avg_logprob, include[])
            segments.append(SegmentPlan(start, end, prob, prompt, params))
        if not segments:
            raise APIError("The audio is too short to transcribe.", param="file", code="empty_audio")
        return TranscriptionPlan(job, segments, request_id, len(waveform) / TOKENIZER_RATE)

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

    async def _pieces(self, seg: SegmentPlan, request_id: str) -> AsyncIterator[str | SegmentText]:
        """One segment's transcript pieces as they are generated, then its `SegmentText`; stops the engine once
        the text is over."""
        ids = self.tokenizer.ids
        text_decoder = self.tokenizer.incremental_decoder()
        detector = TextEndDetector(ids.is_audio)
        done = SegmentText(seg.start, seg.end, seg.speech_prob)
        stream = self.engine.generate(seg.prompt.token_ids, seg.params, request_id)
        try:
            async for delta in stream:
                done.generated += len(delta.token_ids)
                new: list[int] = []
                over = False
                logprobs = delta.logprobs or [None] * len(delta.token_ids)
                for token_id, lp in zip(delta.token_ids, logprobs, strict=True):
                    if token_id in ids.stop_ids or detector.text_over(token_id):
                        over = True
                        break
                    if not ids.is_audio(token_id):
                        new.append(token_id)
                        if lp is not None:
                            done.logprobs.append(lp)
                done.text_ids += new
                if new and (piece := text_decoder.feed(new)):
                    done.text += piece
                    yield piece
                if over:
                    break
        finally:
            await stream.aclose()  # before the engine finished (the early stop, a disconnect): aborts the request
        if tail := text_decoder.flush():
            done.text += tail
            yield tail
        yield done

    async def _segments(self, plan: TranscriptionPlan, *, stream: bool = False) -> AsyncIterator[str | SegmentText]:
        """Every segment's pieces and result, in order, under the time limits."""
        for k, seg in enumerate(plan.segments):
            request_id = plan.request_id if len(plan.segments) == 1 else f"{plan.request_id}-{k}"
            async for item in self.time_limits.bounded(self._pieces(seg, request_id), stream=stream):
                yield item

    def _usage(self, plan: TranscriptionPlan, results: list[SegmentText]) -> wire.TranscriptionUsage:
        n_prompt = sum(len(s.prompt.token_ids) for s in plan.segments)
        audio = sum(s.prompt.audio_tokens for s in plan.segments)
        generated = sum(r.generated for r in results)
        return wire.TranscriptionUsage(
            input_tokens=n_prompt,
            output_tokens=generated,
            total_tokens=n_prompt + generated,
            input_token_details=wire.InputTokenDetails(audio_tokens=audio, text_tokens=n_prompt - audio),
        )

    async def _complete(
        self, plan: TranscriptionPlan
    ) -> wire.TranscriptionResponse | wire.TranslationResponse | wire.TranscriptionVerboseResponse | str:
        results: list[SegmentText] = []
        async with engine_errors():
            async for item in self._segments(plan):
                if isinstance(item, SegmentText):
                    results.append(item)
        job = plan.job
        text = join_texts([r.text for r in results])
        fmt = job.response_format
        if fmt == "json" and job.task == "translate":
            return wire.TranslationResponse(text=text)
        if fmt == "json":
            logprobs = wire_logprobs(self.tokenizer, results) if job.logprobs else None
            return wire.TranscriptionResponse(text=text, usage=self._usage(plan, results), logprobs=logprobs)
        if fmt == "verbose_json":
            return verbose(
                results,
                task=job.task,
                language=_language(job, text),
                duration=plan.duration,
                temperature=job.temperature,
            )
        if fmt in ("srt", "vtt"):
            return subtitles(fmt, results)
        return text

    async def _stream(self, plan: TranscriptionPlan) -> AsyncIterator[wire.TranscriptionStreamEvent]:
        # Deltas join to exactly the done event's text: each segment's leading and trailing spaces dropped, one
        # space between segments where join_texts puts one.
        results: list[SegmentText] = []
        sent = ""
        started, pending = False, ""
        async with engine_errors():
            async for item in self._segments(plan, stream=True):
                if isinstance(item, SegmentText):
                    results.append(item)
                    started, pending = False, ""
                    continue
                text = pending + item
                if not started:
                    text = text.lstrip()
                    if not text:
                        continue
                    if sent and (sent[-1].isascii() or text[0].isascii()):
                        text = " " + text
                    started = True
                body = text.rstrip()
                pending = text[len(body) :]
                if body:
                    sent += body
                    yield wire.TranscriptTextDeltaEvent(delta=body)
        yield wire.TranscriptTextDoneEvent(text=join_texts([r.text for r in results]), usage=self._usage(plan, results))


def _instruction(job: Job) -> str:
    if job.task == "translate":
        text = TRANSLATE_INSTRUCTION
        if job.prompt:
            text += f' For names and spelling, the English text just before it was: "{job.prompt}"'
        return text
    text = INSTRUCTION
    if job.language:
        text += f" The speech is in {LANGUAGE_NAMES.get(job.language.lower(), job.language)}."
    if job.prompt:
        text += f' For names and spelling, the text just before it was: "{job.prompt}"'
    return text


def _language(job: Job, text: str) -> str:
    if job.task == "translate":
        return "english"  # the output's language, as OpenAI reports it for translations
    if job.language:
        return LANGUAGE_NAMES.get(job.language.lower(), job.language).lower()
    return detect_language(text)
