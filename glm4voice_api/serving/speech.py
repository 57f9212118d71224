"""ServingSpeech: POST /v1/audio/speech, text in, speech out, the spoken words being exactly the input.

GLM-4-Voice has no TTS mode; it speaks its own interleaved replies (13 text tokens, then 26 audio tokens, and so on;
the audio tokens speak the text tokens before them). So a speech request is a chat turn whose text tokens are forced,
by the engine's interleave constraint (a logits processor that only masks, so it cannot kill the engine), to
`tokenizer.encode(input)`, 13 at a time, while the model samples the audio in between. The reply's transcript is
therefore `input` exactly.

Prompt: the text-input system prompt the model was trained on (custom system prompts mostly fail), and one user
message: "Read the following text aloud exactly as written." + " Style: {instructions}." when given + "\\n{input}".
The forced text already fixes the words; the message tells the model that its audio should read them (rather than
answer them), and carries the style (emotion, pace, dialect) where the model reads requests.

Trailing audio (after the last forced text token, see `trailing_audio_bounds`): audio lags text by design, so the
words of the last text group (and any lag built up before it) are still to be spoken when the text runs out.

Every 4xx is decided before the first byte: `create_speech` validates (model, voice, context length) and only then
returns the byte stream or the event stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np
from glm4voice_vllm import AUDIO_SLOTS, TEXT_SLOTS

from glm4voice_api.audio.b64 import Base64Pieces
from glm4voice_api.audio.encode import AudioEncoder, content_type, make_encoder
from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.pipeline.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Sampling
from glm4voice_api.pipeline.spoken_turn import AudioChunk
from glm4voice_api.pipeline.turn import Turn, TurnDone
from glm4voice_api.protocol import speech as wire
from glm4voice_api.request_context import request_received
from glm4voice_api.serving.errors import engine_errors
from glm4voice_api.serving.model_names import check_model
from glm4voice_api.serving.replies import Replies
from glm4voice_api.serving.voices import VoiceResolver
from glm4voice_api.text.prompt import Prompt, PromptBuilder, TextPart, UserMessage
from glm4voice_api.text.tokenizer import GLM4Tokenizer

READ_ALOUD = "Read the following text aloud exactly as written."
AUDIO_PER_TEXT = AUDIO_SLOTS // TEXT_SLOTS  # the pattern's nominal 2 audio tokens per text token
TRAILING_SLACK = AUDIO_SLOTS  # one audio group (~2 s): pauses, a final breath, very short inputs


def speech_text(text: str, instructions: str | None) -> str:
    """The user message of a speech prompt (see the module docstring)."""
    head = READ_ALOUD
    if instructions and (style := instructions.strip().rstrip(".")):
        head += f" Style: {style}."
    return f"{head}\n{text}"


@dataclass(frozen=True)
class SpeechLayout:
    """Where the forced text ends in the reply and how much audio may follow it."""

    text_end: int  # output position just after the last forced text token
    min_audio_after_text: int
    max_audio_after_text: int

    @property
    def max_tokens(self) -> int:
        return self.text_end + self.max_audio_after_text + 1  # + the end-of-turn token


def trailing_audio_bounds(n_text: int, *, random_weights: bool) -> SpeechLayout:
    """Bounds of the audio after the forced text, for `n_text` (>= 1) forced text tokens.

    min: the last text group's nominal share (2 audio tokens per text token): an end before that would cut its
    words. With random weights max = min, so the length is deterministic: 2 audio tokens per text token overall,
    i.e. 160 ms of speech per text token at speed 1. With real weights the model ends the turn itself once it has
    spoken everything; max leaves room for speech slower than the nominal rate (the lag grows with the text, so
    2 more audio tokens per text token overall: up to 320 ms per text token) plus one audio group of slack.
    """
    groups, within = divmod(n_text - 1, TEXT_SLOTS)
    last_group = within + 1
    text_end = groups * (TEXT_SLOTS + AUDIO_SLOTS) + last_group
    low = AUDIO_PER_TEXT * last_group
    high = low if random_weights else low + AUDIO_PER_TEXT * n_text + TRAILING_SLACK
    return SpeechLayout(text_end, low, high)


@dataclass
class SpeechPlan:
    """A validated request, ready to run."""

    prompt: Prompt
    params: GenerationParams
    response_format: str
    speed: float
    voice: Voice | None


@dataclass
class SpeechAudio:
    """A validated `stream_format=audio` response: its Content-Type and the file's bytes as they are encoded."""

    content_type: str
    chunks: AsyncIterator[bytes]


class _ThreadedEncoder:
    """Runs a streaming encoder off the event loop (mp3/opus cost ~20 ms of CPU per second of audio).

    A cancelled `await` does not stop the worker thread, so `close` defers to the end of the call in flight:
    closing an FFmpeg context while another thread encodes with it could crash the process.
    """

    def __init__(self, encoder: AudioEncoder) -> None:
        self._encoder = encoder
        self._busy: asyncio.Future | None = None

    async def _run(self, fn, *args) -> bytes:
        self._busy = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self._busy)

    async def feed(self, samples: np.ndarray) -> bytes:
        return await self._run(self._encoder.feed, samples)

    async def finish(self) -> bytes:
        return await self._run(self._encoder.finish)

    def close(self) -> None:
        # No await: under anyio's level-triggered cancellation (client gone) an await here would be cancelled too.
        busy = self._busy
        if busy is not None and not busy.done():
            busy.add_done_callback(lambda _: self._encoder.close())
        else:
            self._encoder.close()


class ServingSpeech:
    def __init__(
        self,
        model: ServedModel,
        prompts: PromptBuilder,
        tokenizer: GLM4Tokenizer,
        sampling: Sampling,
        voices: VoiceResolver,
        replies: Replies,
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.tokenizer = tokenizer
        """Encodes the input: its tokens are the reply's forced text."""
        self.sampling = sampling
        self.voices = voices
        self.replies = replies

    async def create_speech(
        self, request: wire.SpeechRequest, request_id: str, tenant: str
    ) -> SpeechAudio | AsyncIterator[wire.SpeechAudioDelta | wire.SpeechAudioDone]:
        async with self.replies.time_limits.preparing():
            plan = await self._plan(request, tenant)
        turn = self.replies.turn(plan.prompt, plan.params, request_id)
        if request.stream_format == "sse":
            return self._events(turn, plan)
        return SpeechAudio(content_type(plan.response_format), self._bytes(turn, plan))

    async def _plan(self, req: wire.SpeechRequest, tenant: str) -> SpeechPlan:
        check_model(self.model, req.model, "speech")
        voice = await self.voices.resolve(req.voice, tenant, param="voice")
        prompt = self.prompts.build(
            [UserMessage(parts=(TextPart(speech_text(req.input, req.instructions)),))], input_mode="text"
        )
        forced = self.tokenizer.encode(req.input)
        layout = self._layout(len(prompt.token_ids), len(forced))
        params = GenerationParams(
            max_tokens=layout.max_tokens,
            temperature=DEFAULT_TEMPERATURE,
            top_p=DEFAULT_TOP_P,
            stop_token_ids=self.sampling.stop_ids,
            constraint=self.sampling.constraint(
                forced_text=forced,
                min_audio_after_text=layout.min_audio_after_text,
                max_audio_after_text=layout.max_audio_after_text,
            ),
        )
        return SpeechPlan(prompt, params, req.response_format, req.speed, voice)

    def _layout(self, n_prompt: int, n_text: int) -> SpeechLayout:
        layout = trailing_audio_bounds(n_text, random_weights=self.model.random_weights)
        max_len = self.model.max_model_len
        room = max_len - n_prompt - layout.text_end - 1  # audio tokens that fit after the forced text
        if room < layout.min_audio_after_text:
            needed = n_prompt + layout.text_end + layout.min_audio_after_text + 1
            raise APIError(
                f"This model's maximum context length is {max_len} tokens. However, speaking this input needs at "
                f"least {needed} tokens ({n_prompt} in the prompt, {needed - n_prompt} for the interleaved text and "
                "speech). Please shorten the input.",
                param="input",
                code="context_length_exceeded",
            )
        # A long input on a short context keeps the guaranteed minimum and gives up some slack above it.
        return SpeechLayout(layout.text_end, layout.min_audio_after_text, min(layout.max_audio_after_text, room))

    async def _encoded(self, turn: Turn, plan: SpeechPlan) -> AsyncIterator[bytes | TurnDone]:
        """The file's bytes as each decoder chunk is encoded, then the turn's TurnDone."""
        replies = self.replies
        encoder = _ThreadedEncoder(make_encoder(plan.response_format, input_rate=replies.sample_rate, speed=plan.speed))
        started, first = request_received(), True  # first-audio latency: from the request's arrival
        meter = replies.meter(stream=True)
        spoken = replies.events(turn, spoken=True, voice=plan.voice, stream=True, live=plan.speed <= 1.0)
        try:
            async with engine_errors(), aclosing(spoken) as events:
                async for event in events:
                    if isinstance(event, AudioChunk):
                        meter.add(len(event.samples))
                        if data := await encoder.feed(event.samples):
                            if first:
                                first = False
                                replies.first_audio_sent(started)
                            yield data
                    elif isinstance(event, TurnDone):
                        meter.done()
                        if tail := await encoder.finish():
                            yield tail
                        yield event
        finally:
            encoder.close()

    async def _bytes(self, turn: Turn, plan: SpeechPlan) -> AsyncIterator[bytes]:
        # Past the first byte no error envelope can be sent: an exception here makes the server drop the
        # connection before the final chunk, so the client sees a truncated body rather than a short file.
        async with aclosing(self._encoded(turn, plan)) as items:
            async for item in items:
                if isinstance(item, bytes):
                    yield item

    async def _events(
        self, turn: Turn, plan: SpeechPlan
    ) -> AsyncIterator[wire.SpeechAudioDelta | wire.SpeechAudioDone]:
        # Clients join the deltas' strings too: each covers whole 3-byte groups (and samples, for pcm).
        pieces = Base64Pieces(frame_bytes=2 if plan.response_format == "pcm" else 1)
        async with aclosing(self._encoded(turn, plan)) as items:
            async for item in items:
                if isinstance(item, bytes):
                    if data := pieces.feed(item):
                        yield wire.SpeechAudioDelta(audio=data)
                    continue
                if tail := pieces.finish():
                    yield wire.SpeechAudioDelta(audio=tail)
                u = item.usage
                usage = wire.SpeechUsage(
                    input_tokens=u.prompt_tokens,
                    output_tokens=u.completion_tokens,
                    total_tokens=u.prompt_tokens + u.completion_tokens,
                )
                yield wire.SpeechAudioDone(usage=usage, transcript=item.transcript)
