"""What a listener hears, computed from when each audio chunk arrived: the pure part of the load generator.

A turn's audio arrives as chunks; chunk k arrives `t_k` seconds after the request was sent and holds `d_k` seconds
of audio. A player that starts playing `D` seconds after sending plays chunk k from `D + sum(d_0 .. d_{k-1})`, so it
never runs dry when `D >= t_k - sum(d_0 .. d_{k-1})` for every k. The smallest such `D` is the turn's *playable
latency*: the start delay a player needs to play the whole answer without a gap. It is at least the first audio's
latency, and equals it when the audio keeps ahead of playback.

Gaps are counted for a player that starts at the first chunk and, when dry, pauses until the next chunk arrives
(what a naive player does): the number of pauses and the seconds of silence in total.

Everything here works on plain lists, so the rules are unit-tested on hand-made arrival times
(tests/unit/test_loadgen_playback.py); bench/loadgen.py records the arrivals over HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REALTIME_PLAYABLE_S = 1.0
"""A level is real time when every turn succeeded and every turn's playable latency is at most this."""

JITTER_BUFFER_S = 0.25
"""Under overload a turn is gap-free when a player starting this long after its first audio never runs dry
(playable latency - first audio <= this): an admitted turn may have waited in the admission queue first."""

DEFINITIONS = {
    "playable_latency": "per turn: max over audio chunks k of (arrival of chunk k - seconds of audio before chunk k),"
    " from the request being sent: the start delay a player needs to never run dry",
    "realtime": f"a level is real time when every turn succeeded and every playable latency <= {REALTIME_PLAYABLE_S} s",
    "gap": "a player starting at the first chunk runs dry and pauses until the next chunk (count and total seconds)",
    "answer_ratio": "(request sent -> last audio byte) / seconds of audio",
    "gap_free_under_overload": f"an admitted turn whose playable latency - first audio <= {JITTER_BUFFER_S} s "
    "(a player starting that long after its first audio never runs dry; queue wait excluded)",
}

Arrival = tuple[float, float]
"""(seconds since the request was sent, seconds of audio in the chunk)."""


@dataclass(frozen=True)
class PlaybackStats:
    first_audio_s: float
    playable_s: float
    last_audio_s: float
    audio_s: float
    chunks: int
    gaps: int
    gap_s: float
    worst_audio_s: float = 0.0
    """Seconds of audio before the chunk that set the playable latency: where in the reply the listener came closest
    to running dry (0: the first chunk; a chunk in the first 2 s: the stream's start)."""

    @property
    def answer_ratio(self) -> float:
        """Request sent -> last audio byte, over the audio's length (< 1: the answer arrived faster than it plays)."""
        return self.last_audio_s / self.audio_s if self.audio_s > 0 else float("inf")

    @property
    def startup_slack_s(self) -> float:
        """Extra start delay past the first audio that gap-free playback needs (0 when the audio keeps ahead)."""
        return self.playable_s - self.first_audio_s


def playback_stats(arrivals: list[Arrival]) -> PlaybackStats | None:
    """Playable latency and gaps of one turn; None when no audio arrived (empty chunks are ignored)."""
    chunks = [(float(t), float(d)) for t, d in arrivals if d > 0]
    if not chunks:
        return None
    chunks.sort(key=lambda c: c[0])
    before = 0.0  # seconds of audio in the chunks before this one
    playable, worst = chunks[0][0], 0.0
    played_until = chunks[0][0]  # when the audio received so far finishes playing, for a start at the first chunk
    gaps, gap_s = 0, 0.0
    for t, d in chunks:
        if t - before > playable:
            playable, worst = t - before, before
        if t > played_until:
            gaps += 1
            gap_s += t - played_until
            played_until = t
        played_until += d
        before += d
    return PlaybackStats(
        first_audio_s=chunks[0][0],
        playable_s=playable,
        last_audio_s=chunks[-1][0],
        audio_s=before,
        chunks=len(chunks),
        gaps=gaps,
        gap_s=gap_s,
        worst_audio_s=worst,
    )


@dataclass
class TurnResult:
    """One request as the client saw it (filled by bench/loadgen.py, or by hand in tests)."""

    session: int = 0
    turn: int = 0
    status: int = 0
    error: str | None = None
    retry_after_s: float | None = None
    started_s: float = 0.0
    """When the request was sent, in seconds since its level (or overload run) started."""
    first_text_s: float | None = None
    """Request sent -> first transcript text (the LLM's first tokens: the part of first audio that is not decoder)."""
    completion_tokens: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    events: int = 0
    """Server-sent events received (a 200 without audio says how far its stream got)."""
    done: bool = False
    """The stream's `[DONE]` arrived (False for a 200 whose stream ended without it)."""

    @property
    def stats(self) -> PlaybackStats | None:
        return playback_stats(self.arrivals)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.stats is not None

    def error_key(self) -> str:
        if self.status and self.status != 200:
            return str(self.status)
        if self.error:
            return self.error[:60]
        text = ", text" if self.first_text_s is not None else ""
        return f"no audio ({self.events} events{text}, {'[DONE]' if self.done else 'no [DONE]'})"


@dataclass(frozen=True)
class Percentiles:
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0, digits: int = 3) -> Percentiles:
        if not values:
            return cls()
        arr = np.asarray(values, dtype=np.float64) * scale
        return cls(
            p50=round(float(np.percentile(arr, 50)), digits),
            p90=round(float(np.percentile(arr, 90)), digits),
            p99=round(float(np.percentile(arr, 99)), digits),
            max=round(float(arr.max()), digits),
            mean=round(float(arr.mean()), digits),
        )


def is_realtime(turns: list[TurnResult]) -> bool:
    """The level rule: at least one turn, every turn succeeded, every playable latency <= REALTIME_PLAYABLE_S."""
    if not turns:
        return False
    for t in turns:
        stats = t.stats
        if not t.ok or stats is None or stats.playable_s > REALTIME_PLAYABLE_S:
            return False
    return True


def error_counts(turns: list[TurnResult]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for t in turns:
        if not t.ok:
            errors[t.error_key()] = errors.get(t.error_key(), 0) + 1
    return errors


@dataclass(frozen=True)
class LevelSummary:
    concurrency: int
    turns: int
    ok: int
    errors: dict[str, int]
    realtime: bool
    first_audio_ms: Percentiles
    playable_ms: Percentiles
    first_text_ms: Percentiles
    answer_ratio: Percentiles
    streams_with_gap: int
    gaps_per_stream: Percentiles
    gap_s_total: float
    audio_seconds: float
    completion_tokens: int
    tokens_per_s: float
    wall_s: float


def level_summary(concurrency: int, turns: list[TurnResult], wall_s: float) -> LevelSummary:
    ok = [(t, t.stats) for t in turns if t.ok]
    stats = [s for _, s in ok if s is not None]
    tokens = sum(t.completion_tokens for t, _ in ok)
    return LevelSummary(
        concurrency=concurrency,
        turns=len(turns),
        ok=len(ok),
        errors=error_counts(turns),
        realtime=is_realtime(turns),
        first_audio_ms=Percentiles.of([s.first_audio_s for s in stats], 1000, 1),
        playable_ms=Percentiles.of([s.playable_s for s in stats], 1000, 1),
        first_text_ms=Percentiles.of([t.first_text_s for t, _ in ok if t.first_text_s is not None], 1000, 1),
        answer_ratio=Percentiles.of([s.answer_ratio for s in stats]),
        streams_with_gap=sum(s.gaps > 0 for s in stats),
        gaps_per_stream=Percentiles.of([s.gaps for s in stats]),
        gap_s_total=round(sum(s.gap_s for s in stats), 3),
        audio_seconds=round(sum(s.audio_s for s in stats), 2),
        completion_tokens=tokens,
        tokens_per_s=round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
        wall_s=round(wall_s, 2),
    )


@dataclass(frozen=True)
class OverloadSummary:
    sessions: int
    seconds: float
    offered: int
    """Requests sent (a request retried after a 429 counts again)."""
    admitted: int
    """Requests answered 200."""
    rejected_429: int
    errors_other_than_429: int
    """Requests that failed otherwise: another status, a connection error, or a 200 that errored or had no audio."""
    errors: dict[str, int]
    gap_free_admitted: int
    gap_free_fraction_of_admitted: float | None
    strict_realtime_admitted: int
    strict_realtime_fraction_of_admitted: float | None
    """Admitted turns with playable latency <= REALTIME_PLAYABLE_S (queue wait included), for transparency."""
    retry_after_s: Percentiles
    first_audio_ms_admitted: Percentiles
    playable_ms_admitted: Percentiles
    startup_slack_ms_admitted: Percentiles
    completion_tokens: int
    tokens_per_s: float
    wall_s: float


def overload_summary(sessions: int, seconds: float, turns: list[TurnResult], wall_s: float) -> OverloadSummary:
    admitted = [t for t in turns if t.status == 200]
    rejected = [t for t in turns if t.status == 429]
    failed = [t for t in turns if t.status != 429 and not t.ok]
    stats = [s for s in (t.stats for t in admitted if t.ok) if s is not None]
    gap_free = sum(s.startup_slack_s <= JITTER_BUFFER_S for s in stats)
    strict = sum(s.playable_s <= REALTIME_PLAYABLE_S for s in stats)
    tokens = sum(t.completion_tokens for t in admitted if t.ok)
    return OverloadSummary(
        sessions=sessions,
        seconds=seconds,
        offered=len(turns),
        admitted=len(admitted),
        rejected_429=len(rejected),
        errors_other_than_429=len(failed),
        errors={k: v for k, v in error_counts(turns).items() if k != "429"},
        gap_free_admitted=gap_free,
        gap_free_fraction_of_admitted=round(gap_free / len(admitted), 4) if admitted else None,
        strict_realtime_admitted=strict,
        strict_realtime_fraction_of_admitted=round(strict / len(admitted), 4) if admitted else None,
        retry_after_s=Percentiles.of([t.retry_after_s for t in rejected if t.retry_after_s is not None]),
        first_audio_ms_admitted=Percentiles.of([s.first_audio_s for s in stats], 1000, 1),
        playable_ms_admitted=Percentiles.of([s.playable_s for s in stats], 1000, 1),
        startup_slack_ms_admitted=Percentiles.of([s.startup_slack_s for s in stats], 1000, 1),
        completion_tokens=tokens,
        tokens_per_s=round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
        wall_s=round(wall_s, 2),
    )
