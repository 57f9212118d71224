"""A lone stream's first chunk decoded with the GPU to itself: the LLM's next step waits for that pass.

Why: with the decoder in vLLM's process (the default on one GPU), a pass shares the GPU with the LLM's steps, which
keep running after a reply's first 10 audio tokens, and the LLM's kernels fill every SM. A one-row first-chunk pass
took 44-56 ms beside them against ~22 ms alone on an H100 (bench/results/GPU.md, sessions 21-26): at one stream that
was a fifth of first audio (265 ms: 193 the LLM's tokens, 47 the pass). Holding the LLM for one pass costs its
streams the pass's length of token supply once per new stream; while few streams are open each has several times
real time of supply (123 tokens/s at 1 stream, 18.75 needed), so that is nothing a listener hears. Under load
(more than `max_streams` open) the LLM is never held: there its steps are what every starting stream waits for.
Measured (H100, 2026-12-06, bench/results/GPU.md session 26): the one-row first pass 32.1-32.7 ms held against 53.1
not held, first audio at one stream 250.1 and 258.6 ms against 278.0 on the same machine.

`gate` is the engine's side (plugins/glm4voice_vllm/step_gate.py holds vLLM's next `execute_model` while closed);
a gate that is never opened again cannot stall the LLM for long: it waits a bounded time per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class StepGate(Protocol):
    def close(self) -> None: ...

    def open(self) -> None: ...


class LLMPause:
    def __init__(self, gate: StepGate | None, max_streams: int) -> None:
        self.gate = gate
        self.max_streams = max_streams
        self.passes = 0
        """Passes run with the LLM held."""

    @contextlib.contextmanager
    def around(self, firsts: int, open_streams: int) -> Iterator[None]:
        """Around a pass with `firsts` first chunks while `open_streams` decoder streams are open."""
        if self.gate is None or not firsts or open_streams > self.max_streams:
            yield
            return
        self.passes += 1
        self.gate.close()
        try:
            yield
        finally:
            self.gate.open()  # after the pass's results reached the CPU: its GPU work is done
