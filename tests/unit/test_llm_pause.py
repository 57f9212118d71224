"""A lone stream's first chunk decoded with the LLM held (pipeline/llm_pause.py, plugins/glm4voice_vllm/step_gate.py):
the gate closes only around a pass with a first chunk while few streams are open, always reopens, and vLLM's step
waits at a closed gate for a bounded time only. The real engine with the host and its gate: tests/api/test_decoder_in_engine.py."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from glm4voice_vllm.step_gate import StepGate

from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import FixedSchedule
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.llm_pause import LLMPause
from tests.conftest import CONFORMANCE


class Gate:
    def __init__(self) -> None:
        self.events: list[str] = []

    def close(self) -> None:
        self.events.append("close")

    def open(self) -> None:
        self.events.append("open")


def test_the_llm_is_held_only_for_a_first_chunk_while_few_streams_are_open() -> None:
    gate = Gate()
    pause = LLMPause(gate, max_streams=2)
    for firsts, open_streams in ((0, 1), (1, 3), (2, 5)):  # no first chunk, or too many streams: never held
        with pause.around(firsts, open_streams):
            pass
    assert gate.events == [] and pause.passes == 0
    with pytest.raises(RuntimeError), pause.around(1, 2):
        raise RuntimeError("the pass failed")
    assert gate.events == ["close", "open"] and pause.passes == 1  # reopened although the pass failed
    with LLMPause(None, 8).around(1, 1):  # no gate (the decoder outside vLLM's process): nothing to hold
        pass


def test_above_few_streams_first_passes_hold_the_llm_within_their_share_of_the_time() -> None:
    now = [0.0]
    gate = Gate()
    pause = LLMPause(gate, max_streams=1, share=0.25, clock=lambda: now[0])
    with pause.around(3, 32):  # banked 0.25 s: held; the pass takes 0.2 s
        now[0] += 0.2
    with pause.around(3, 32):  # 0.05 s left + 0.05 refilled during the first pass: held, and overdrawn by 0.1 s
        now[0] += 0.2
    assert pause.passes == pause.budget_passes == 2 and gate.events == ["close", "open"] * 2
    with pause.around(3, 32):  # overdrawn: not held until the refill (0.25 s a second) pays it back
        now[0] += 0.5
    assert pause.passes == 2
    now[0] += 0.2  # -0.1 + 0.25 x 0.7 > 0
    with pause.around(1, 32):
        now[0] += 0.01
    assert pause.passes == 3
    now[0] += 100  # the bank holds at most `share` seconds: two passes of 0.2 s, not a third
    for _ in range(3):
        with pause.around(1, 32):
            now[0] += 0.2
    assert pause.passes == pause.budget_passes == 5
    never = LLMPause(gate, max_streams=1, clock=lambda: now[0])  # share 0 (default): never above max_streams
    with never.around(1, 2):
        pass
    with never.around(1, 1):
        pass
    assert never.passes == 1 and never.budget_passes == 0


def test_a_closed_gate_holds_the_next_step_until_it_opens_and_never_longer_than_its_bound() -> None:
    class Runner:
        def __init__(self) -> None:
            self.steps: list[float] = []

        def execute_model(self, output: object) -> object:
            self.steps.append(time.perf_counter())
            return output

    runner = Runner()
    gate = StepGate(max_hold_s=0.5)
    gate.install(runner)
    assert runner.execute_model("a") == "a"  # open: straight through
    gate.close()
    threading.Timer(0.1, gate.open).start()
    start = time.perf_counter()
    assert runner.execute_model("b") == "b"
    assert 0.09 <= runner.steps[-1] - start < 0.45 and gate.held_s >= 0.09
    gate.close()  # never reopened: the step goes on after max_hold_s
    bounded = StepGate(max_hold_s=0.05)
    bounded.install(other := Runner())
    bounded.close()
    start = time.perf_counter()
    other.execute_model("c")
    assert 0.04 <= other.steps[-1] - start < 0.4


@pytest.mark.usefixtures("conformance")
def test_the_scheduler_holds_the_llm_around_its_first_chunks_pass_only() -> None:
    decoder = load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")
    config = DecoderStreamConfig(schedule=(10, 20), max_prompt_tokens=30)
    gate = Gate()
    scheduler = DecoderScheduler(
        decoder, config, policy=FixedSchedule(config.schedule), max_batch=4, llm_pause=LLMPause(gate, 1)
    )

    async def run() -> int:
        scheduler.start()
        try:
            stream = scheduler.open_stream()
            audio = stream.audio()
            stream.push(np.arange(10).tolist())
            await anext(audio)  # the first chunk: its pass held the LLM
            assert gate.events == ["close", "open"]
            stream.push(np.arange(30).tolist(), final=True)
            chunks = [c async for c in audio]
            stream.close()
            return len(chunks)
        finally:
            await scheduler.close()

    assert asyncio.run(run()) >= 1
    assert gate.events == ["close", "open"]  # later chunks' passes never held it
