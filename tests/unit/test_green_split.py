"""The decoder/LLM SM split (pipeline/green_split.py): who gets which stream, when a thread takes it up, and that a
split asked for where there is nothing to split changes nothing. The green contexts themselves need a GPU
(bench/green_probe.py measures them there); here torch's stream calls are stand-ins."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from glm4voice_vllm.step_gate import StepGate

from glm4voice_api.config import SpeechDecoderSettings
from glm4voice_api.pipeline import green_split
from glm4voice_api.pipeline.decoder_rules import RULES
from glm4voice_api.pipeline.green_split import StreamSlot, set_green_split


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.synced = 0

    def synchronize(self) -> None:
        self.synced += 1


@pytest.fixture
def cuda_streams(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """torch.cuda's current stream for one thread, and every set_stream call."""
    state = SimpleNamespace(current=FakeStream("home"), sets=[])

    def set_stream(stream: FakeStream) -> None:
        state.sets.append(stream.name)
        state.current = stream

    monkeypatch.setattr(torch.cuda, "current_stream", lambda: state.current)
    monkeypatch.setattr(torch.cuda, "set_stream", set_stream)
    return state


def test_a_slot_takes_up_its_stream_once_after_the_old_one_finished(cuda_streams: SimpleNamespace) -> None:
    slot, home, green = StreamSlot(), cuda_streams.current, FakeStream("green")
    slot.take_up()  # nothing asked: no stream call at all (the engine's loop pays this per step)
    assert cuda_streams.sets == []

    slot.want(green)
    slot.take_up()
    slot.take_up()
    assert cuda_streams.sets == ["green"] and home.synced == 1  # the home stream's queued work finished first

    slot.want(None)  # back to the thread's own stream, not to the default stream
    slot.take_up()
    assert cuda_streams.sets == ["green", "home"] and green.synced == 1


def test_the_split_goes_to_the_decoder_and_the_engines_loop(
    cuda_streams: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[int, int]] = []

    def streams(sms: int, device: int = 0) -> tuple[FakeStream, FakeStream]:
        made.append((sms, device))
        return FakeStream(f"decoder{sms}"), FakeStream(f"llm{sms}")

    monkeypatch.setattr(green_split, "green_streams", streams)
    gate = StepGate()
    scheduler = SimpleNamespace(
        own_stream=True,
        stream_slot=StreamSlot(),
        llm_pause=SimpleNamespace(gate=gate),
        decoder=SimpleNamespace(device=torch.device("cuda", 1)),
    )
    runner = SimpleNamespace(execute_model=lambda: cuda_streams.current.name)
    gate.install(runner)

    set_green_split(scheduler, 32)
    assert made == [(32, 1)]
    assert runner.execute_model() == "llm32"  # the engine's next step runs on the LLM's part
    scheduler.stream_slot.take_up()
    assert cuda_streams.current.name == "decoder32"

    set_green_split(scheduler, 0)
    assert runner.execute_model() == "home"  # sms 0: both back on their own streams


def test_a_split_with_nothing_to_split_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = SimpleNamespace(own_stream=False, stream_slot=StreamSlot(), llm_pause=SimpleNamespace(gate=None))
    with caplog.at_level(logging.WARNING):
        set_green_split(scheduler, 32)  # a decoder outside vLLM's process (or on the CPU)
    assert "green_sms=32 ignored" in caplog.text
    assert scheduler.stream_slot._wanted is None


def test_green_sms_is_a_live_rule_and_off_by_default() -> None:
    assert "green_sms" in RULES and SpeechDecoderSettings().green_sms == 0
    with pytest.raises(ValueError):
        SpeechDecoderSettings(green_sms=-8)
