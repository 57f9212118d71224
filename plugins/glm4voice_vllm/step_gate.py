"""Holds vLLM's next model step while the speech decoder's host runs a pass that should have the GPU to itself.

Installed by the decoder host's extension on the worker's model runner in vLLM's model process (the engine core
with one GPU): its `execute_model`, called by the engine core's loop once per step, first waits for the gate. The
step already on the GPU finishes; the next one starts when the pass has ended (glm4voice_api/pipeline/llm_pause.py
says when the host closes it). The wait is bounded (`max_hold_s` per step), so a host that never reopens the gate
slows the LLM but cannot stop it.

It is also where the loop's thread takes up a new CUDA stream between steps (`stream_slot`: a green context's SMs,
glm4voice_api/pipeline/green_split.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any


class StepGate:
    def __init__(self, max_hold_s: float = 0.25) -> None:
        self.max_hold_s = max_hold_s
        self._open = threading.Event()
        self._open.set()
        from glm4voice_api.pipeline.green_split import StreamSlot

        self.stream_slot = StreamSlot()
        self.held_s = 0.0
        """Seconds vLLM's loop waited at the gate (the LLM time the decoder's held passes cost)."""

    def install(self, model_runner: Any) -> None:
        """Wrap this runner's `execute_model` (an instance attribute: the class and other runners are untouched)."""
        step = model_runner.execute_model

        def gated(*args: Any, **kwargs: Any) -> Any:
            if not self._open.is_set():
                start = time.perf_counter()
                self._open.wait(self.max_hold_s)
                self.held_s += time.perf_counter() - start
            self.stream_slot.take_up()
            return step(*args, **kwargs)

        model_runner.execute_model = gated

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()
