"""When to decode a stream's buffered audio tokens, and how many: sized from what the listener has buffered.

A fixed schedule (10, 20, 40, ...) outruns the token supply: after a 10-token first chunk (0.4 s of audio: the
decoder holds 5 tokens back for the crossfade) the second chunk waits for 20 more audio tokens, ~30 LLM steps with
the 13 text tokens in between, while the first chunk plays for 0.4 s. Under load those steps take longer than
0.4 s and the listener hears a gap.

`AdaptiveChunkPolicy` decides per stream, every time the scheduler looks:
- the first chunk goes as soon as `first_chunk` tokens are there (first-audio latency);
- a stream whose buffered audio is about to run out (less than `lead_s` plus the expected wait for a decoder pass)
  decodes whatever it has (at least `MIN_CHUNK_TOKENS`): small chunks while the buffer is thin;
- otherwise it would like a chunk as long as the audio it has buffered (`growth` x buffered seconds, in tokens,
  between `first_chunk` and `max_chunk`): long chunks once it is ahead, since every chunk re-runs the flow over its
  context and fewer, longer chunks cost less per second of audio. It waits for that many tokens only while its
  measured token supply (`StreamView.rate`, audio tokens per second since the reply began, text blocks included)
  brings them before the buffer runs low; otherwise it decodes what it has now. That is what keeps a chunk from
  straddling the 13 text tokens the model writes between two 26-token audio blocks while the listener waits.
A due chunk takes every pending token up to `max_chunk` (HiFT and the flow both take rows of any length in one pass).

`FixedSchedule` is the reference behaviour (the tests compare batched and direct decoding with it).
Pure logic over `StreamView`s: unit-tested with made-up clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from glm4voice_api.models.speech_decoder.stream import MIN_CHUNK_TOKENS

TOKENS_PER_SECOND = 12.5  # speech tokens per second of audio


@dataclass(frozen=True)
class StreamView:
    """What a policy sees of one stream at one moment."""

    pending: int
    """Audio tokens received and not decoded yet."""
    started: bool
    """Some audio was already emitted (the listener's playback is running)."""
    buffered_s: float
    """Seconds of emitted audio not yet played (playback assumed to start at the first chunk); may be < 0."""
    decoded: int = 0
    """Tokens decoded so far (fixed schedules count chunks from it)."""
    rate: float | None = None
    """Audio tokens per second this stream has received since its reply began (None: not measured yet)."""


class ChunkPolicy(Protocol):
    def chunk_size(self, view: StreamView, pass_s: float) -> int | None:
        """Tokens to decode now (None: wait). `pass_s`: expected seconds until a pass started now returns."""
        ...

    def rider_size(self, view: StreamView) -> int | None:
        """Tokens to decode if a pass has a free row (None: not worth it)."""
        ...

    def wake_in(self, view: StreamView, pass_s: float) -> float | None:
        """Seconds until this stream could become due without new tokens (None: only new tokens can do it)."""
        ...

    def urgency(self, view: StreamView) -> float:
        """Sort key: lower goes first."""
        ...


@dataclass(frozen=True)
class AdaptiveChunkPolicy:
    first_chunk: int = 10
    max_chunk: int = 160
    lead_s: float = 0.3
    """Safety margin kept in the listener's buffer (network, event loop, jitter)."""
    growth: float = 1.0
    """Target chunk = growth x buffered audio: 1.0 roughly doubles the buffer with each chunk while tokens last."""

    def __post_init__(self) -> None:
        if not MIN_CHUNK_TOKENS <= self.first_chunk <= self.max_chunk:
            msg = f"need {MIN_CHUNK_TOKENS} <= first_chunk <= max_chunk, got {self.first_chunk}, {self.max_chunk}"
            raise ValueError(msg)

    def target(self, buffered_s: float) -> int:
        want = int(buffered_s * TOKENS_PER_SECOND * self.growth)
        return max(self.first_chunk, min(self.max_chunk, want))

    def _slack(self, view: StreamView, pass_s: float) -> float:
        """Seconds this stream can still wait before its chunk must start (negative: already late)."""
        return view.buffered_s - self.lead_s - pass_s

    def _supply_s(self, view: StreamView) -> float:
        """Seconds until the target chunk's tokens are there at the measured rate (0: there, or no rate yet)."""
        missing = self.target(view.buffered_s) - view.pending
        if missing <= 0:
            return 0.0
        if not view.rate:
            return 0.0  # not measured yet: judge by the buffer alone
        return missing / view.rate

    def chunk_size(self, view: StreamView, pass_s: float) -> int | None:
        if not view.started:
            return self.first_chunk if view.pending >= self.first_chunk else None
        if view.pending < MIN_CHUNK_TOKENS:
            return None
        take = min(view.pending, self.max_chunk)
        slack = self._slack(view, pass_s)
        if slack <= 0 or view.pending >= self.target(view.buffered_s):
            return take
        # Waiting for the target's tokens would run the buffer below the lead: decode what is there now.
        return take if self._supply_s(view) >= slack else None

    def rider_size(self, view: StreamView) -> int | None:
        if not view.started or view.pending < self.first_chunk:
            return None
        return min(view.pending, self.max_chunk)

    def wake_in(self, view: StreamView, pass_s: float) -> float | None:
        if not view.started or view.pending < MIN_CHUNK_TOKENS:
            return None
        return max(0.0, self._slack(view, pass_s) - self._supply_s(view))

    def urgency(self, view: StreamView) -> float:
        # A first chunk ranks like a stream about to run dry: both are what a listener notices.
        return view.buffered_s if view.started else 0.05


@dataclass(frozen=True)
class FixedSchedule:
    """Chunk k has schedule[k] tokens (the last repeats): the reference's streaming, independent of timing."""

    schedule: tuple[int, ...] = (10, 20, 40)
    first_rank_s: float = -1.0
    """A first chunk ranks like a started stream with this much audio left. -1 (default): before every started
    stream. A positive value lets a listener about to run dry go first (a gap heard is worse than a first word one
    pass later): while new streams keep arriving (an overload's onset) their first chunks otherwise lead every pass,
    and a started stream's longer chunk waits behind them until its listener runs dry (H100 2026-12-06, GPU.md
    session 26). Unmeasured on a GPU."""
    first_company_s: float | None = None
    """A pass led by a first chunk takes a started stream's chunk only while that stream has less than this much
    audio buffered (None: any due chunk). Why: with an 8-token second chunk, second chunks come due while a burst's
    first chunks are still being decoded, and rows that could wait a pass lengthened the first chunks' passes (H100
    2026-12-06: the first pass at 32 streams 101-138 ms against 81-87 with a 16-token second chunk; GPU.md session 30)."""

    def chunk_size(self, view: StreamView, pass_s: float) -> int | None:
        done, k = 0, 0
        while done < view.decoded:
            done += self.schedule[min(k, len(self.schedule) - 1)]
            k += 1
        step = self.schedule[min(k, len(self.schedule) - 1)]
        return step if view.pending >= step else None

    def rider_size(self, view: StreamView) -> int | None:
        return None  # chunk boundaries stay exactly the schedule's

    def wake_in(self, view: StreamView, pass_s: float) -> float | None:
        return None

    def urgency(self, view: StreamView) -> float:
        return view.buffered_s if view.started else self.first_rank_s
