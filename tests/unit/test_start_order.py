"""The start order around vLLM's fork of its engine core: the speech models begin loading only once the fork is done
(`start_audio_models(after=...)`), and `engine_core_forks` says when vLLM will fork rather than spawn."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from glm4voice_api.config import EngineSettings, Settings
from glm4voice_api.engine.vllm_engine import engine_core_forks
from glm4voice_api.pipeline import runtime
from glm4voice_api.pipeline.runtime import CheckpointFolders


def test_the_audio_models_wait_for_the_fork(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    started: list[tuple[str, float]] = []
    monkeypatch.setattr(runtime, "_load_audio_input", lambda *a: started.append(("tokenizer", time.monotonic())))
    monkeypatch.setattr(runtime, "_build_scheduler", lambda *a: started.append(("decoder", time.monotonic())))
    paths = CheckpointFolders(llm=tmp_path, speech_tokenizer=tmp_path, decoder=tmp_path)
    settings = Settings(audio_device="cpu")

    async def main() -> float:
        forked = threading.Event()
        futures = runtime.start_audio_models(settings, paths, after=forked)
        await asyncio.sleep(0.3)
        assert started == []  # nothing may touch CUDA (or torch's CPU locks) before vLLM has forked
        opened = time.monotonic()
        forked.set()
        await asyncio.gather(*futures)
        return opened

    opened = asyncio.run(main())
    assert sorted(name for name, _ in started) == ["decoder", "tokenizer"]
    assert all(at >= opened for _, at in started)


def test_without_a_gate_the_audio_models_start_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    started: list[str] = []
    monkeypatch.setattr(runtime, "_load_audio_input", lambda *a: started.append("tokenizer"))
    monkeypatch.setattr(runtime, "_build_scheduler", lambda *a: started.append("decoder"))
    paths = CheckpointFolders(llm=tmp_path, speech_tokenizer=tmp_path, decoder=tmp_path)

    async def main() -> None:
        await asyncio.gather(*runtime.start_audio_models(Settings(audio_device="cpu"), paths))

    asyncio.run(main())
    assert sorted(started) == ["decoder", "tokenizer"]


def test_when_vllm_forks_its_engine_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    # On a GPU (CUDA not initialised in this CPU test process, as in a server before its engine starts)
    assert engine_core_forks(EngineSettings(process="separate"), cuda=True)
    assert engine_core_forks(EngineSettings(), cuda=True)  # auto: its own process
    assert not engine_core_forks(EngineSettings(process="inproc"), cuda=True)  # no process at all
    assert not engine_core_forks(EngineSettings(), cuda=False)  # vLLM's CPU platform always spawns
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    assert not engine_core_forks(EngineSettings(process="separate"), cuda=True)


def test_the_fork_hook_signals_the_parent() -> None:
    """What `VllmLLMEngine.start` registers: the event is set in this process once a child has been forked."""
    forked = threading.Event()
    os.register_at_fork(after_in_parent=forked.set)
    pid = os.fork()
    if pid == 0:  # the child leaves at once, without running pytest's exit handlers
        os._exit(0)
    os.waitpid(pid, 0)
    assert forked.is_set()
