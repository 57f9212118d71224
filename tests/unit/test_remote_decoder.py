"""The decoder host's protocol without vLLM: `start_host` runs in this process (as vLLM's worker extension would run
it in the model's process) and `RemoteDecoder` drives it over the real ZeroMQ sockets. Audio, counters, pass log,
session bookkeeping and a host that cannot load its decoder (tests/api/test_decoder_in_engine.py: the real engine)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from glm4voice_api.config import Settings
from glm4voice_api.pipeline.decoder_host import start_host
from glm4voice_api.pipeline.remote_decoder import RemoteDecoder
from glm4voice_api.pipeline.runtime import _build_scheduler
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a" / "speech_decoder"
TOKENS = [(i * 37) % 97 for i in range(60)]
SETTINGS = Settings().resolved(cuda=False, model_seq_length=8192)  # as build_runtime hands them over


async def launch(spec: dict) -> list:
    return [start_host(spec)]


def spec(path=TINY) -> dict:
    return {"settings": SETTINGS.model_dump_json(), "decoder_path": str(path), "device": "cpu"}


def test_audio_counters_and_sessions_come_back_as_the_local_scheduler_has_them() -> None:
    local = _build_scheduler(SETTINGS, TINY, "cpu")  # the host builds exactly this

    async def run() -> None:
        remote = RemoteDecoder()
        await remote.start(launch, spec(), timeout_s=120)
        try:
            assert remote.alive and remote.sample_rate == local.sample_rate and remote.device == "cpu"
            streamed = remote.open_stream(live=True)
            streamed.push(TOKENS, final=True)  # at once: chunking by arrival time would make the two differ
            got = np.concatenate([c async for c in streamed.audio()])
            reference = local.open_stream(live=True)
            reference.push(TOKENS, final=True)
            want = np.concatenate([c async for c in reference.audio()])
            np.testing.assert_array_equal(got, want)  # one process, one thread count: bit for bit
            assert remote.active_streams() == 1
            streamed.close()
            reference.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (remote.active_streams() or remote.batches < local.batches):
                await asyncio.sleep(0.05)
            assert remote.active_streams() == 0
            assert remote.batches == local.batches and remote.chunks == local.chunks >= 1
            assert remote.busy_seconds > 0 and len(remote.pass_log) == remote.batches
            assert remote.first_chunks == 1 and remote.pass_seconds() > 0
            whole = await remote.open_stream().decode(TOKENS)  # the whole-file path (speech, voices)
            assert len(whole) == len(want)
        finally:
            await remote.close()
            await local.close()
        assert not remote.alive and not any(p.exists() for p in remote._paths)  # sockets' files removed

    asyncio.run(run())


def test_a_host_that_cannot_load_its_decoder_fails_the_start_with_the_reason(tmp_path) -> None:
    async def run() -> None:
        remote = RemoteDecoder()
        with pytest.raises(RuntimeError, match="failed to start"):
            await remote.start(launch, spec(tmp_path / "missing"), timeout_s=60)
        await remote.close()

    asyncio.run(run())


def test_a_stream_opened_on_a_stopped_decoder_fails_at_once() -> None:
    from glm4voice_api.pipeline.decoder_scheduler import DecoderStoppedError

    async def run() -> None:
        remote = RemoteDecoder()  # never started
        with pytest.raises(DecoderStoppedError):
            remote.open_stream()
        await remote.close()

    asyncio.run(run())


def test_a_host_that_stops_fails_its_open_streams_at_once() -> None:
    from glm4voice_api.pipeline.decoder_scheduler import DecoderStoppedError

    async def run() -> None:
        remote = RemoteDecoder()
        await remote.start(launch, spec(), timeout_s=120)
        try:
            stream = remote.open_stream(live=True)
            stream.push(TOKENS[:5])  # not enough for a chunk: it waits
            remote._send("stop")  # as the host's loop ending on an error would
            with pytest.raises(DecoderStoppedError, match="stopped"):
                await asyncio.wait_for(anext(stream.audio()), 30)
            assert not remote.alive
            stream.close()  # safe on a host that is gone
        finally:
            await remote.close()

    asyncio.run(run())
