"""Deadline batching: which due chunks may wait for a pass that another stream needs, and how many of them a pass
may take (`DecoderScheduler(hold_lead_s=...)`, `--speech-decoder.hold`).

Why: streams that start at different times fall due at different times, and decoding each chunk as soon as it is
due gave passes of ~5.5 rows instead of ~16, at a fixed cost each beside the LLM (H200, 2026-12-04). A held chunk is
the same chunk decoded later: same boundaries, same audio. Off by default: in bench/sim_schedule.py's model it
merges the passes of a 16-stream burst but loses gap-free turns from 32 streams on (bench/results/GPU.md).
Pure logic over the scheduler's streams and its pass-cost fit: unit-tested with made-up clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glm4voice_api.pipeline.pass_cost import PassCost

__all__ = ["DeadlineHold"]

Row = tuple[Any, int]
"""(ScheduledStream, tokens due): one row of a pass being chosen."""


@dataclass(frozen=True)
class DeadlineHold:
    lead_s: float
    """A live stream's due chunk waits while more than this plus the expected pass wait is buffered."""
    margin_s: float = 0.1
    """Held rows may lengthen a pass only while every needed listener keeps this much audio."""

    def slack(self, s: Any, now: float, pass_s: float) -> float:
        """Seconds a due chunk of `s` may still be held; <= 0: it must go now."""
        if not s.live or s.first_emit is None or s._final:
            return 0.0  # whole-file replies, first chunks (first audio) and final flushes never wait
        return s.buffered_seconds(now) - self.lead_s - pass_s

    def needed(self, s: Any, size: int, now: float, pass_s: float) -> bool:
        return size < 0 or self.slack(s, now, pass_s) <= 0

    def budget(self, cost: PassCost, batch: list[Row], longest: int, now: float) -> float | None:
        """Seconds the pass of the needed rows `batch` may take once held rows join: no needed listener may run dry
        for them (its buffer, less `margin_s`), and a first chunk's pass grows by at most a quarter (its first audio
        waits for the whole pass). None: no cost estimate yet (held rows then join only into free rows)."""
        alone = cost.estimate(cost.padded_units(len(batch), longest))
        if alone is None:
            return None
        budget = 1.25 * alone
        buffers = [s.buffered_seconds(now) - self.margin_s for s, _ in batch if s.first_emit is not None]
        if buffers and all(s.first_emit is not None for s, _ in batch):
            budget = max(budget, min(buffers))
        return budget

    @staticmethod
    def fits(cost: PassCost, rows: int, longest: int, row_len: int, budget: float | None) -> bool:
        """A held row joins a pass of `rows` rows only within the budget (without one: where it costs nothing)."""
        units = cost.padded_units(rows + 1, max(longest, row_len))
        if budget is None:
            return units <= cost.padded_units(rows, longest)
        estimate = cost.estimate(units)
        return estimate is not None and estimate <= budget
