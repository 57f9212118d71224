"""A lone stream's first chunk decoded with the GPU to itself: the LLM's next step waits for that pass.

Why: with the decoder in vLLM's process (the default on one GPU), a pass shares the GPU with the LLM's steps, which
keep running after a reply's first 10 audio tokens, and the LLM's kernels fill every SM. A one-row first-chunk pass
took 44-56 ms beside them against ~22 ms alone on an H100 (bench/results/GPU.md, sessions 21-26): at one stream that
was a fifth of first audio (265 ms: 193 the LLM's tokens, 47 the pass). Holding the LLM for one pass costs its
streams the pass's length of token supply once per new stream; while few streams are open each has several times
real time of supply (123 tokens/s at 1 stream, 18.75 needed), so that is nothing a listener hears. Under load
(more than `max_streams` open) it is held only on the `share` budget below (default: never): there its steps are
what every starting stream waits for.
Measured (H100, 2026-12-06, bench/results/GPU.md session 26): the one-row first pass 32.1-32.7 ms held against 53.1
not held, first audio at one stream 250.1 and 258.6 ms against 278.0 on the same machine.

Under load a first chunk's pass runs 3-5x longer beside the LLM's steps than alone (H100, session 26's 32-stream
burst: 160-225 ms for 3-13 rows of 10-26 tokens, against 32 ms for one row held), and that pass is what each new
listener's first audio waits for. `share` (> 0) lets such passes hold the LLM above `max_streams` too, while the held
time stays within that share of the time (a budget that refills at `share` seconds per second, at most `share`
seconds banked): a burst of new streams gets its first chunks decoded alone, and a steady stream of arrivals cannot
take more than that share of the LLM's steps from the playing streams (which at 32 streams get ~2.5x the tokens
they need, bench/results/GPU.md). Measured worse (H100, session 27, share 0.3 at 32 streams): the first chunk's pass
was 40 ms shorter (98 against 138 ms), but the held steps made every stream's first 23 tokens 157 ms later (522
against 365 ms) and 27 of 32 streams had a gap; so the default is 0.

`gate` is the engine's side (plugins/glm4voice_vllm/step_gate.py holds vLLM's next `execute_model` while closed);
a gate that is never opened again cannot stall the LLM for long: it waits a bounded time per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Protocol


class StepGate(Protocol):
    def close(self) -> None: ...

    def open(self) -> None: ...


class LLMPause:
    def __init__(
        self,
        gate: StepGate | None,
        max_streams: int,
        share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gate = gate
        self.max_streams = max_streams
        self.share = share
        """Above `max_streams`: the most of the time the LLM is held for first chunks (0: never)."""
        self.clock = clock
        self.passes = 0
        """Passes run with the LLM held."""
        self.budget_passes = 0
        """Of those, passes above `max_streams` (held on the `share` budget)."""
        self._banked = share  # seconds of hold the budget allows now
        self._refilled = clock()

    @contextlib.contextmanager
    def around(self, firsts: int, open_streams: int) -> Iterator[None]:
        """Around a pass with `firsts` first chunks while `open_streams` decoder streams are open."""
        if self.gate is None or not firsts:
            yield
            return
        budget = open_streams > self.max_streams
        if budget and not self._within_budget():
            yield
            return
        self.passes += 1
        self.budget_passes += budget
        start = self.clock()
        self.gate.close()
        try:
            yield
        finally:
            self.gate.open()  # after the pass's results reached the CPU: its GPU work is done
            if budget:
                self._banked -= self.clock() - start  # may go below 0: the next hold waits for the refill

    def _within_budget(self) -> bool:
        if self.share <= 0:
            return False
        now = self.clock()
        self._banked = min(self.share, self._banked + self.share * (now - self._refilled))
        self._refilled = now
        return self._banked > 0
