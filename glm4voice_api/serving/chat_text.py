"""Helpers of chat output: stop strings on the text, logprobs in OpenAI's shape, several choices' streams merged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TypeVar

from glm4voice_api.engine.base import TokenLogprob
from glm4voice_api.protocol import chat as wire
from glm4voice_api.text.tokenizer import GLM4Tokenizer

T = TypeVar("T")
MIN_LOGPROB = -9999.0  # OpenAI's floor: -inf (a masked token) is not JSON


class StopText:
    """Cuts text at the first stop string. Text that may be the start of one is held back until it is decided, so
    a stop string never reaches the client, even split across pieces."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self.text = ""
        """Everything let through so far."""
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            self.text += piece
            return piece
        buf = self._held + piece
        hits = [i for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            out = buf[: min(hits)]
        else:
            hold = 0
            for k in range(min(len(buf), max(map(len, self.stops)) - 1), 0, -1):
                if any(s.startswith(buf[-k:]) for s in self.stops):
                    hold = k
                    break
            self._held = buf[len(buf) - hold :]
            out = buf[: len(buf) - hold]
        self.text += out
        return out

    def flush(self) -> str:
        """The held-back text at the end of the reply (it never became a stop string)."""
        held, self._held = self._held, ""
        self.text += held
        return held


def wire_logprobs(tokenizer: GLM4Tokenizer, entries: list[TokenLogprob], top: int) -> list[wire.TokenLogprob]:
    """Text tokens' logprobs as OpenAI sends them: each token's text, its UTF-8 bytes and the top alternatives."""

    def fields(token_id: int, logprob: float) -> dict:
        raw = tokenizer.decode_bytes([token_id])
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": max(logprob, MIN_LOGPROB),
            "bytes": list(raw),
        }

    return [
        wire.TokenLogprob(
            **fields(e.token_id, e.logprob), top_logprobs=[wire.TopLogprob(**fields(t, lp)) for t, lp in e.top[:top]]
        )
        for e in entries
    ]


async def merge(sources: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """(index, item) from several async iterators as items arrive. Leaving early, or a failure in one source,
    cancels and closes them all (their engine requests aborted)."""
    if len(sources) == 1:  # the common case, n=1: no task or queue in the way of the first audio
        async with aclosing(sources[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=16)
    end = object()

    async def pump(index: int, source: AsyncIterator[T]) -> None:
        try:
            async with aclosing(source):
                async for item in source:
                    await queue.put((index, item))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((index, exc))
        finally:
            await queue.put((index, end))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is end:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        # Drain so a pump blocked on the full queue can see its cancellation and close its source.
        while not all(t.done() for t in tasks):
            while not queue.empty():
                queue.get_nowait()
            await asyncio.wait(tasks, timeout=0.05)
