"""ScheduledStream: one reply's handle on the decoder scheduler (tokens in, audio out) and its worker-side state.

The event loop calls `push`, `audio`, `decode` and `close`; every other field belongs to the scheduler
(on its worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.models.speech_decoder.stream import DecoderStream
from glm4voice_api.pipeline.chunk_policy import StreamView

END = None
"""Put on a stream's audio queue after its last chunk."""


class StreamAudio:
    """The event loop's side of a decoder session's audio: chunks (or an error, or END) handed over from a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._audio: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def push(self, tokens: list[int], *, final: bool = False) -> None:
        raise NotImplementedError

    async def audio(self) -> AsyncIterator[np.ndarray]:
        """Decoded 22.05 kHz float32 chunks as they are ready, until the final flush; a decoder error is raised."""
        while (item := await self._audio.get()) is not END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def decode(self, tokens: list[int]) -> np.ndarray:
        """All of `tokens` as one final flush, concatenated (voices, tests)."""
        self.push(tokens, final=True)
        chunks = [c async for c in self.audio()]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def _send(self, item: object) -> None:  # from any thread
        try:
            self._loop.call_soon_threadsafe(self._audio.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass


class ScheduledStream(StreamAudio):
    """One reply's decoder session: push audio tokens in, iterate decoded audio out."""

    def __init__(self, scheduler: Any, voice: Voice | None, *, live: bool = False) -> None:
        super().__init__()
        # scheduler: its DecoderScheduler (not imported: that module imports this one)
        self._scheduler = scheduler
        self._voice = voice
        self.live = live
        """A listener plays the audio as it comes (a streamed reply): its chunks may wait while its buffer allows
        (deadline batching). A whole-file reply waits for its last chunk, so its chunks never wait."""
        # Worker-thread side.
        self._stream: DecoderStream | None = None
        self._tokens: list[int] = []
        self._final = False
        self.finished = False
        self.decoded = 0
        self.emitted_samples = 0
        self.first_emit: float | None = None
        self.opened = scheduler.clock()
        self.received = 0
        """Audio tokens pushed so far (with `opened`: the stream's token supply rate)."""
        self.first_ready: float | None = None
        """When the tokens of the first chunk were all there (first-audio breakdown: supply, wait, pass)."""
        self.first_sent: float | None = None
        """When the first chunk's pass began."""

    def push(self, tokens: list[int], *, final: bool = False) -> None:
        """Hand new audio tokens to the decoder (non-blocking); `final` flushes everything left."""
        if self.closed:
            raise RuntimeError("stream is closed")
        self._scheduler._put(("tokens", self, list(tokens), final, self._scheduler.clock()))

    def close(self) -> None:
        """Free the session (on the worker thread); safe to call more than once and from any path."""
        if not self.closed:
            self.closed = True
            self._scheduler._put(("close", self))

    # Worker-thread side.
    def buffered_seconds(self, now: float) -> float:
        """Audio emitted minus audio already played (playback assumed to start at the first chunk)."""
        if self.first_emit is None:
            return 0.0
        return self.emitted_samples / self._scheduler.sample_rate - (now - self.first_emit)

    def view(self, now: float) -> StreamView:
        started = self.first_emit is not None
        # Averaged from the request's start, so the first text block and the prefill count: early on the rate is
        # underestimated, which errs towards smaller chunks while the listener's buffer is thinnest.
        rate = self.received / (now - self.opened) if started and now > self.opened else None
        return StreamView(
            pending=len(self._tokens),
            started=started,
            buffered_s=self.buffered_seconds(now),
            decoded=self.decoded,
            rate=rate,
        )

    def _decoder_stream(self) -> DecoderStream:
        if self._stream is None:
            self._stream = self._scheduler.decoder.open_stream(self._voice, self._scheduler.stream_config)
        return self._stream

    def _free(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._tokens = []
