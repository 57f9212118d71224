"""One spoken-chat turn: prompt ids -> engine -> generated ids split into transcript text and audio tokens.

The turn owns its request id from the HTTP header to the engine request. Leaving the event iterator early (client
gone, limit, shutdown) closes the engine stream, which aborts the engine request: nothing outlives its client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from glm4voice_api.engine.base import GenerationParams, LLMEngine, TokenLogprob
from glm4voice_api.text.prompt import Prompt, ReplySplitter
from glm4voice_api.text.tokenizer import GLM4Tokenizer


@dataclass
class TurnUsage:
    prompt_tokens: int
    prompt_audio_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0
    completion_audio_tokens: int = 0

    @property
    def completion_text_tokens(self) -> int:
        return self.completion_tokens - self.completion_audio_tokens


@dataclass
class TranscriptDelta:
    text: str
    logprobs: list[TokenLogprob] | None = None
    """The text tokens behind `text` (when the request asked for logprobs)."""


@dataclass
class AudioTokensDelta:
    tokens: list[int]
    """Speech-codebook indices (0..16383)."""


@dataclass
class TurnDone:
    finish_reason: str
    usage: TurnUsage
    reply_ids: list[int] = field(default_factory=list)
    """The reply's exact generated ids without the end-of-turn id: what the next turn's prompt holds."""
    transcript: str = ""
    audio_tokens: list[int] = field(default_factory=list)


TurnEvent = TranscriptDelta | AudioTokensDelta | TurnDone


class Turn:
    """Runs one reply through the engine and yields transcript pieces, audio tokens and a final TurnDone."""

    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: GLM4Tokenizer,
        prompt: Prompt,
        params: GenerationParams,
        request_id: str,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.params = params
        self.request_id = request_id
        # Readable while (and after) the events run, so a reply that is cancelled midway still has its ids so far.
        self.splitter = ReplySplitter(tokenizer)
        self.usage = TurnUsage(prompt_tokens=len(prompt.token_ids), prompt_audio_tokens=prompt.audio_tokens)

    def _take(self, pending: list[TokenLogprob]) -> list[TokenLogprob] | None:
        if self.params.logprobs is None:
            return None
        taken = list(pending)
        pending.clear()
        return taken

    async def events(self) -> AsyncIterator[TurnEvent]:
        splitter = self.splitter
        text_decoder = self.tokenizer.incremental_decoder()
        usage = self.usage
        transcript: list[str] = []
        # Logprobs of text tokens whose characters have not come out yet (a UTF-8 character split across tokens).
        pending_logprobs: list[TokenLogprob] = []
        ids = self.tokenizer.ids
        finish_reason = "stop"
        stream = self.engine.generate(self.prompt.token_ids, self.params, self.request_id)
        try:
            async for delta in stream:
                usage.completion_tokens += len(delta.token_ids)
                usage.cached_tokens = max(usage.cached_tokens, delta.num_cached_tokens)
                text_ids, audio = splitter.feed(delta.token_ids)
                if delta.logprobs is not None:
                    pending_logprobs += [
                        lp for lp in delta.logprobs if not ids.is_audio(lp.token_id) and lp.token_id not in ids.stop_ids
                    ]
                if text_ids and (piece := text_decoder.feed(text_ids)):
                    transcript.append(piece)
                    yield TranscriptDelta(piece, self._take(pending_logprobs))
                if audio:
                    usage.completion_audio_tokens += len(audio)
                    yield AudioTokensDelta(audio)
                if delta.finished:
                    finish_reason = delta.finish_reason or "stop"
        finally:
            await stream.aclose()
        if (tail := text_decoder.flush()) or pending_logprobs:
            transcript.append(tail)
            yield TranscriptDelta(tail, self._take(pending_logprobs))
        yield TurnDone(
            finish_reason="length" if finish_reason == "length" else "stop",
            usage=usage,
            reply_ids=splitter.reply.all_ids,
            transcript="".join(transcript),
            audio_tokens=splitter.reply.audio_tokens,
        )
