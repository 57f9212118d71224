"""Capacity-aware admission: how many streams this server keeps gap-free, measured while it serves.

Admitting every request the engine could batch (vLLM's max_num_seqs, 256 on a GPU) lets overload degrade every
listener at once: past the point where the GPU keeps up, all streams start to stutter. The admission limit is
therefore not a setting but a measurement, adjusted once a second from what the server sees:

- a settled stream's listener ran dry (the decoder emitted a chunk after the previous audio had finished playing,
  past the stream's first 2 s: a burst of new streams makes some second chunks late at loads that are real time;
  counted by the decoder scheduler), or `near_miss_cut` (1) near misses came within the last `cooldown_s` (a
  leading signal: chunks that barely made it come before the ones that do not): the limit drops to `backoff` (70%)
  of the most streams that ran in the last `cooldown_s` (a gap is reported seconds after the load that caused it,
  when some of those streams may have ended), that level is remembered as the knee, and the limit stays put for
  `cooldown_s`: the underruns of streams admitted before the cut are the same overload and do not cut again;
- the LLM's token supply per stream is close to real time (13 text + 26 audio tokens per 2.08 s of speech = 18.75
  tokens/s), or a single near miss came: no growth (the next stream would tip it over);
- a stream still in its first 2 s ran dry (`start_hold_s`): no growth for 3 s. Not a cut (a burst of new streams
  at a load that stays real time makes some of those), but the streams admitted last are the ones starting, and
  growing past them while they run dry is how a cold server's limit went 37 -> 43 in an overload before the first
  settled gap cut it (H100, 2026-12-06: 96.7% of the admitted gap-free);
- otherwise, when nearly every slot is used (or requests wait), the limit grows by one stream, then holds
  `settle_s` (3 s) so that the streams it admitted get past their start, where gaps and near misses are counted,
  before the next; past `min(0.8, backoff)` of the knee (70% by default: the cut's level), by one stream per
  `probe_s`. The wait after a growth step holds growth only: a gap meanwhile still cuts. Near misses reported
  during a cut's hold are that overload's echo and never count toward the next cut.

Why this policy (measured, H100, 2026-12-05, `bench/results/GPU.md`): on one warm server, 64 closed-loop sessions
(twice what stays real time) against the previous policy (first limit a quarter of the batch size, +25% a second,
cut to 90%, near misses only holding growth), in three rounds of two runs it kept 85%, 93% and 85% of the admitted
turns gap-free against 48%, 45% and 75%, and delivered more gap-free turns in absolute terms too (101, 105 and 99
against 71, 53 and 91), at the cost of more 429s (22-45 of 137-164 offered, against 4-21). What it fixes: growing 25% a
second, a fresh server overshot its knee before the first gap was reported (gaps are seen ~7 s into an overload),
and every stream admitted meanwhile stuttered; the simulator (`bench/sim_admission.py`) ranks it above the old
policy as well.
`bench/gpu_suite.py --variant NAME:CAPACITY__STEP=0.25,...` compares others on one warm server.

The decoder's busy time is deliberately not a signal: the chunk policy spends idle decoder time on smaller chunks
(a thinner, safer buffer costs nothing when the GPU is free), so a busy decoder is not a saturated one.

The knee outlives the process (`CapacityMemory`): a restarted server of the same GPU and settings starts where the
last cut left the limit.

Newcomers beyond the limit wait in the bounded queue (or get 429 with Retry-After), so the streams already admitted
stay gap-free. The limit starts at an eighth of the engine's batch size (`initial_limit`) and never leaves
[`floor`, `ceiling`] (the ceiling is the engine's batch size). Pure logic over cumulative counters: unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REALTIME_TOKENS_PER_S = 39 / 2.08  # 13 text + 26 audio tokens per 26 x 80 ms of speech


def initial_limit(ceiling: int) -> int:
    """The first admission limit of a server without a remembered knee: an eighth of the engine's batch size (32 of
    vLLM's 256 on a GPU, where 16-32 streams stay real time on an H100 or H200), grown from there one stream per
    `settle_s`. A quarter (64) started above the knee and the first overload stuttered before any gap was seen."""
    return max(1, ceiling // 8)


@dataclass(frozen=True)
class CapacitySignals:
    """Cumulative counters (monotone) plus current counts; the controller differences successive readings."""

    at: float
    underruns: int
    """Listeners of settled streams (past their first 2 s) that ran dry."""
    near_misses: int
    generated_tokens: int
    engine_active: int
    active: int
    queued: int
    start_underruns: int = 0
    """Listeners that ran dry in their stream's first 2 s (not counted in `underruns`)."""


@dataclass
class CapacityController:
    ceiling: int
    initial: int = 64
    floor: int = 2
    supply_margin: float = 1.5
    """Per-stream LLM tokens/s must exceed this x real time for the limit to grow."""
    cooldown_s: float = 5.0
    step: float = 0.0
    """Below the knee, the limit grows by this fraction of itself (at least one stream) per step. 0 (default): one
    stream a step; 0.25 (the policy until 2026-12-05) overshot the knee before the first gap was reported."""
    probe_s: float = 5.0
    """Near the knee, the limit grows by one stream per this many seconds."""
    backoff: float = 0.7
    """After listeners ran dry the limit becomes this x the recent peak (the knee). 0.7 (default; 0.9 until
    2026-12-05): the streams admitted past the knee before the first gap is reported must all fit under the cut."""
    settle_s: float = 3.0
    """After each growth step, hold this long: the streams the step admitted get past their start (where gaps and
    near misses are counted) before the next step. 0: a step a second, which a fresh server under a sudden overload
    takes several times past its knee before the first gap is reported."""
    near_miss_cut: int = 1
    """This many near misses within the last `cooldown_s` cut as an underrun does (a leading signal: settled chunks
    that barely made it come before the ones that do not). 0: near misses only hold growth."""
    start_hold_s: float = 3.0
    """An underrun in a stream's first 2 s holds growth this long (never cuts, unless `start_cut`). 0: such underruns
    are ignored (the policy until 2026-12-06)."""
    start_cut: int = 0
    """Starting underruns seen in this many readings within `start_window_s` cut as a settled underrun does (a
    sustained rate: a 1-s burst's come within a few seconds). 0 (default): they only hold growth. Why it exists: on
    one H100 (2026-12-06, session 28) two of eight 60-s overloads met no settled underrun or near miss early, and the
    limit grew 34 -> 39 while starting streams ran dry about once a second (95.6% and 94.1% of the admitted turns
    gap-free against 96.1-99.6% where an early cut came). After such cuts, at limits of 24-30 that kept 97.7-99.6%
    gap-free, starting underruns still came in 7-10 of every 20 readings, and in 12 in the no-cut regime at 37-39:
    a threshold below ~12 (window 20 s) would cut safe loads too. At 12, no better (H100, session 29, two ABBA rounds:
    96.6% against 97.1%): those stutters are second chunks, not the limit (bench/results/GPU.md)."""
    start_window_s: float = 20.0
    """The window over which `start_cut` counts readings with starting underruns."""

    def __post_init__(self) -> None:
        self.floor = max(1, min(self.floor, self.ceiling))
        self.limit = max(self.floor, min(self.initial, self.ceiling))
        self._last: CapacitySignals | None = None
        self._hold_until = 0.0
        """After a cut: no further cut (the same overload's echo) and no growth until then."""
        self._near_floor = 0
        """Near misses up to this count were reported before or during the last cut's hold (its echo)."""
        self._grow_after = 0.0
        """After a growth step (a probe, or a fast step with settle_s): no growth until then. Cuts are not held:
        the gaps this wait is there to see must still cut."""
        self._recent: deque[tuple[float, int, int]] = deque()  # (at, active, near misses) over the last cooldown_s
        self._starts: deque[float] = deque()  # readings with starting underruns over the last start_window_s
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
        self._recent.append((now.at, now.active, now.near_misses))
        while self._recent[0][0] < now.at - self.cooldown_s:
            self._recent.popleft()
        if last is None or now.at <= last.at:
            return self.limit
        wall = now.at - last.at
        per_stream = (now.generated_tokens - last.generated_tokens) / wall / max(1, now.engine_active)
        holding = now.at < self._hold_until
        if holding:  # near misses reported during a cut's hold are its echo: they never count toward the next cut
            self._near_floor = now.near_misses
        near_window = now.near_misses - max(min(last.near_misses, self._recent[0][2]), self._near_floor)
        near_cut = 0 < self.near_miss_cut <= near_window
        if now.start_underruns > last.start_underruns and not holding:  # during a hold: the cut overload's echo
            self._starts.append(now.at)
        while self._starts and self._starts[0] < now.at - self.start_window_s:
            self._starts.popleft()
        start_cut = 0 < self.start_cut <= len(self._starts)
        if now.underruns > last.underruns or near_cut or start_cut:
            if not holding:  # one cut per overload: later underruns of the same streams are its echo
                peak = max(active for _, active, _ in self._recent)
                self.knee = min(self.limit, peak)
                cause = (
                    "underrun" if now.underruns > last.underruns else "near misses" if near_cut else "start underruns"
                )
                self._set(min(self.knee - 1, math.floor(self.backoff * self.knee)), cause)
                self._hold_until = now.at + self.cooldown_s
                self._starts.clear()
        elif self.start_hold_s > 0 and now.start_underruns > last.start_underruns:
            self.reason = "start underrun"
            self._grow_after = max(self._grow_after, now.at + self.start_hold_s)
        elif now.near_misses > last.near_misses:
            self.reason = "near miss"
        elif now.engine_active and per_stream < self.supply_margin * REALTIME_TOKENS_PER_S:
            self.reason = "token supply"
        elif not holding and now.at >= self._grow_after and (now.queued > 0 or now.active >= 0.9 * self.limit):
            fast = self.limit + max(1, math.ceil(self.step * self.limit))
            near = math.floor(min(0.8, self.backoff) * self.knee) if self.knee is not None else fast
            if fast <= near or self.limit < near:
                self._set(min(fast, near), "demand")
                self._grow_after = now.at + self.settle_s
            else:  # near (or past) the knee: probe one stream at a time
                self._set(self.limit + 1, "demand (probing)")
                self._grow_after = now.at + self.probe_s
        return self.limit

    def restore(self, knee: int) -> None:
        """Start from a knee measured before a restart (`CapacityMemory`): the limit where the last cut left it,
        growing from there one stream per probe, instead of the initial guess that a fresh server must first
        overload to correct (every stream admitted past the knee meanwhile stutters)."""
        self.knee = max(self.floor, min(self.ceiling, knee))
        self._set(min(self.limit, math.floor(self.backoff * self.knee)), "remembered knee")

    def _set(self, value: int, reason: str) -> None:
        new = max(self.floor, min(self.ceiling, value))
        if new != self.limit:
            logger.info("admission limit %d -> %d (%s)", self.limit, new, reason)
        self.limit, self.reason = new, reason


@dataclass(frozen=True)
class CapacityMemory:
    """The knee a server measured, kept across restarts in a small JSON file under `cache_dir` (which deployments
    keep, like the compile caches), one entry per `key`: the GPU and every setting that changes what it can serve.

    Why: a restarted server would otherwise start from the initial guess and learn its knee again the only way it
    can, by admitting past it until listeners run dry. A measurement, not a setting: a stale or foreign entry is
    never used (another key), and the controller keeps probing above a remembered knee as it would above a fresh
    one. Unreadable or unwritable files are logged and ignored: admission control works without them."""

    path: Path
    key: str

    def load(self) -> int | None:
        try:
            entry = json.loads(self.path.read_text()).get(self.key) or {}
            knee = entry.get("knee")
            return int(knee) if isinstance(knee, int) and knee > 0 else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("capacity memory %s unreadable (%s): starting from the initial limit", self.path, exc)
            return None

    def save(self, knee: int) -> None:
        try:
            try:
                entries = json.loads(self.path.read_text())
                entries = entries if isinstance(entries, dict) else {}
            except (FileNotFoundError, ValueError):
                entries = {}
            entries[self.key] = {"knee": int(knee), "at": int(time.time())}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except OSError as exc:
            logger.warning("capacity memory %s not written (%s)", self.path, exc)


async def run_controller(
    controller: CapacityController,
    read: Callable[[], CapacitySignals],
    apply: Callable[[int], None],
    interval_s: float = 1.0,
    memory: CapacityMemory | None = None,
) -> None:
    """Read the signals every `interval_s` and apply the limit, until cancelled; a new knee goes to `memory`."""
    apply(controller.limit)
    saved = controller.knee
    while True:
        await asyncio.sleep(interval_s)
        try:
            apply(controller.update(read()))
        except Exception:  # a bad reading must not stop admission control
            logger.exception("capacity controller step failed")
        if memory is not None and controller.knee is not None and controller.knee != saved:
            saved = controller.knee
            with contextlib.suppress(Exception):  # save() logs its own failures; nothing may stop this loop
                await asyncio.to_thread(memory.save, saved)


def capacity_signals(engine: object, decoder: object, queue: object) -> Callable[[], CapacitySignals]:
    """What the controller reads: the decoder scheduler's and engine's counters, the admission queue's counts."""
    generated = getattr(engine, "generated_tokens", lambda: 0)

    def read() -> CapacitySignals:
        return CapacitySignals(
            at=time.monotonic(),
            underruns=decoder.settled_underruns,  # type: ignore[attr-defined]
            start_underruns=decoder.underruns - decoder.settled_underruns,  # type: ignore[attr-defined]
            near_misses=decoder.near_misses,  # type: ignore[attr-defined]
            generated_tokens=generated(),
            engine_active=engine.active_requests(),  # type: ignore[attr-defined]
            active=queue.active,  # type: ignore[attr-defined]
            queued=queue.queued,  # type: ignore[attr-defined]
        )

    return read
