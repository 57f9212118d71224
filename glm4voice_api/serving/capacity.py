"""Capacity-aware admission: how many streams this server keeps gap-free, measured while it serves.

Admitting every request the engine could batch (vLLM's max_num_seqs, 256 on a GPU) lets overload degrade every
listener at once: past the point where the GPU keeps up, all streams start to stutter. The admission limit is
therefore not a setting but a measurement, adjusted once a second from what the server sees:

- a settled stream's listener ran dry (the decoder emitted a chunk after the previous audio had finished playing,
  past the stream's first 2 s: a burst of new streams makes some second chunks late at loads that are real time;
  counted by the decoder scheduler): the limit drops to `backoff` (90%) of the most streams that ran in the last
  `cooldown_s` (a gap is reported seconds after the load that caused it, when some of those streams may have
  ended), that level is remembered as the knee, and the limit stays put for `cooldown_s`: the underruns of streams
  admitted before the cut are the same overload and do not cut again. A deeper cut is not obviously safer: on an
  H200 a limit held low queued newcomers that then started one by one, the decoder met fewer streams per pass, and
  fewer admitted streams stayed gap-free (31% against 91.5%, 2026-12-04); `bench/gpu_suite.py --variant
  NAME:CAPACITY__BACKOFF=0.7` compares cuts on one warm server;
- chunks arrive just in time (emitted with under 0.1 s of audio left once a stream is past its start: a near
  miss, counted by the decoder scheduler), or the LLM's
  token supply per stream is close to real time (13 text + 26 audio tokens per 2.08 s of speech = 18.75 tokens/s):
  no growth (the next stream would tip it over);
- otherwise, when nearly every slot is used (or requests wait), the limit grows: by `step` (25%) while it is below
  80% of the knee (or the cut's level, if lower; or no knee is known), by one stream per `probe_s` from there (additive increase, multiplicative
  decrease: at 25% a second it overshot the knee within three seconds, and every stream admitted meanwhile
  stuttered; measured on an H200, bench/results).

The decoder's busy time is deliberately not a signal: the chunk policy spends idle decoder time on smaller chunks
(a thinner, safer buffer costs nothing when the GPU is free), so a busy decoder is not a saturated one.

Newcomers beyond the limit wait in the bounded queue (or get 429 with Retry-After), so the streams already admitted
stay gap-free. The limit starts at a quarter of the engine's batch size (`initial`) and never leaves
[`floor`, `ceiling`] (the ceiling is the engine's batch size). Pure logic over cumulative counters: unit-tested.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

REALTIME_TOKENS_PER_S = 39 / 2.08  # 13 text + 26 audio tokens per 26 x 80 ms of speech


@dataclass(frozen=True)
class CapacitySignals:
    """Cumulative counters (monotone) plus current counts; the controller differences successive readings."""

    at: float
    underruns: int
    near_misses: int
    generated_tokens: int
    engine_active: int
    active: int
    queued: int


@dataclass
class CapacityController:
    ceiling: int
    initial: int = 64
    floor: int = 2
    supply_margin: float = 1.5
    """Per-stream LLM tokens/s must exceed this x real time for the limit to grow."""
    cooldown_s: float = 5.0
    step: float = 0.25
    probe_s: float = 5.0
    """Near the knee, the limit grows by one stream per this many seconds."""
    backoff: float = 0.9
    """After listeners ran dry the limit becomes this x the recent peak (the knee)."""

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.ceiling))
        self.limit = max(self.floor, min(self.initial, self.ceiling))
        self._last: CapacitySignals | None = None
        self._hold_until = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (at, active) over the last cooldown_s
        self.knee: int | None = None
        """The most streams running when listeners last ran dry (None: never yet)."""
        self.reason = "initial"

    def reset(self) -> None:
        """Back to the state of a fresh start: no knee, the initial limit (bench/gpu_server.py gives each
        configuration of a warm server the admission a new server would start with)."""
        self.__post_init__()

    def update(self, now: CapacitySignals) -> int:
        """Take a new reading; returns the (possibly changed) limit."""
        last, self._last = self._last, now
        self._recent.append((now.at, now.active))
        while self._recent[0][0] < now.at - self.cooldown_s:
            self._recent.popleft()
        if last is None or now.at <= last.at:
            return self.limit
        wall = now.at - last.at
        per_stream = (now.generated_tokens - last.generated_tokens) / wall / max(1, now.engine_active)
        holding = now.at < self._hold_until
        if now.underruns > last.underruns:
            if not holding:  # one cut per overload: later underruns of the same streams are its echo
                peak = max(active for _, active in self._recent)
                self.knee = min(self.limit, peak)
                self._set(min(self.knee - 1, math.floor(self.backoff * self.knee)), "underrun")
                self._hold_until = now.at + self.cooldown_s
        elif now.near_misses > last.near_misses:
            self.reason = "near miss"
        elif now.engine_active and per_stream < self.supply_margin * REALTIME_TOKENS_PER_S:
            self.reason = "token supply"
        elif not holding and (now.queued > 0 or now.active >= 0.9 * self.limit):
            fast = self.limit + max(1, math.ceil(self.step * self.limit))
            near = math.floor(min(0.8, self.backoff) * self.knee) if self.knee is not None else fast
            if fast <= near:
                self._set(fast, "demand")
            elif self.limit < near:
                self._set(near, "demand")
            else:  # near (or past) the knee: probe one stream at a time
                self._set(self.limit + 1, "demand (probing)")
                self._hold_until = now.at + self.probe_s
        return self.limit

    def _set(self, value: int, reason: str) -> None:
        new = max(self.floor, min(self.ceiling, value))
        if new != self.limit:
            logger.info("admission limit %d -> %d (%s)", self.limit, new, reason)
        self.limit, self.reason = new, reason


async def run_controller(
    controller: CapacityController,
    read: Callable[[], CapacitySignals],
    apply: Callable[[int], None],
    interval_s: float = 1.0,
) -> None:
    """Read the signals every `interval_s` and apply the limit, until cancelled."""
    apply(controller.limit)
    while True:
        await asyncio.sleep(interval_s)
        try:
            apply(controller.update(read()))
        except Exception:  # a bad reading must not stop admission control
            logger.exception("capacity controller step failed")


def capacity_signals(engine: object, decoder: object, queue: object) -> Callable[[], CapacitySignals]:
    """What the controller reads: the decoder scheduler's and engine's counters, the admission queue's counts."""
    generated = getattr(engine, "generated_tokens", lambda: 0)

    def read() -> CapacitySignals:
        return CapacitySignals(
            at=time.monotonic(),
            underruns=decoder.settled_underruns,  # type: ignore[attr-defined]
            near_misses=decoder.near_misses,  # type: ignore[attr-defined]
            generated_tokens=generated(),
            engine_active=engine.active_requests(),  # type: ignore[attr-defined]
            active=queue.active,  # type: ignore[attr-defined]
            queued=queue.queued,  # type: ignore[attr-defined]
        )

    return read
