"""The decoder host's protocol without vLLM: `start_host` runs in this process (as vLLM's worker extension would run
it in the model's process) and `RemoteDecoder` drives it over the real ZeroMQ sockets. Audio, counters, pass log,
session bookkeeping, the speech tokenizer hosted beside the decoder, and a host that cannot load its models
(tests/api/test_decoder_in_engine.py: the real engine)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from glm4voice_api.config import Settings
from glm4voice_api.pipeline.decoder_host import start_host
from glm4voice_api.pipeline.remote_decoder import RemoteDecoder, RemoteTokenizer
from glm4voice_api.pipeline.runtime import _build_scheduler, _load_audio_input
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a" / "speech_decoder"
TINY_TOKENIZER = CONFORMANCE / "tiny_a" / "speech_tokenizer"
TOKENS = [(i * 37) % 97 for i in range(60)]
SETTINGS = Settings().resolved(cuda=False, model_seq_length=8192)  # as build_runtime hands them over


async def launch(spec: dict) -> list:
    return [start_host(spec)]


def spec(path=TINY, tokenizer: Path | None = None) -> dict:
    return {
        "settings": SETTINGS.model_dump_json(),
        "decoder_path": str(path),
        "device": "cpu",
        "tokenizer_path": str(tokenizer) if tokenizer else None,
    }


def speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


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
            assert remote.host_thread_cpu_s["decoder"] > 0  # the host process's threads (here: this one's)
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
        with pytest.raises(RuntimeError, match=r"failed to start.*--no-speech-decoder\.in-engine"):
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


def test_the_hosted_speech_tokenizer_gives_the_local_workers_tokens() -> None:
    from glm4voice_api.pipeline.decoder_scheduler import DecoderStoppedError

    local = _load_audio_input(SETTINGS, TINY_TOKENIZER)  # the host loads exactly this
    clips = [speech(seconds, seed) for seed, seconds in enumerate((1.0, 2.5, 0.4))]

    async def run() -> None:
        remote = RemoteDecoder()
        await remote.start(launch, spec(tokenizer=TINY_TOKENIZER), timeout_s=120)
        tokenizer = RemoteTokenizer(remote)
        try:
            assert remote.tokens_per_second == local.tokens_per_second == 12.5
            got = await asyncio.gather(*(tokenizer.tokenize(c) for c in clips))  # batched there as here
            want = [await local.worker.tokenize(c) for c in clips]
            assert got == want and [len(t) for t in got] == [13, 32, 5]
            tokenizer.set_max_wait_ms(2)  # a live rule of the benchmarks reaches the host's worker
            with pytest.raises(ValueError, match="max_wait_ms"):
                tokenizer.set_max_wait_ms(-1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not tokenizer.busy_seconds:
                await asyncio.sleep(0.05)
            assert tokenizer.busy_seconds > 0  # the host's counter, mirrored
            remote._send("stop")  # a host gone: the next request fails at once, as a stopped decoder does
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and remote.alive:
                await asyncio.sleep(0.05)
            with pytest.raises(DecoderStoppedError):
                await tokenizer.tokenize(clips[0])
        finally:
            await tokenizer.close()
            await remote.close()
            await local.worker.close()

    asyncio.run(run())


def test_a_host_whose_tokenizer_cannot_load_fails_the_start(tmp_path) -> None:
    async def run() -> None:
        remote = RemoteDecoder()
        with pytest.raises(RuntimeError, match="failed to start"):
            await remote.start(launch, spec(tokenizer=tmp_path / "missing"), timeout_s=120)
        await remote.close()
        decoder_only = RemoteDecoder()
        with pytest.raises(RuntimeError, match="does not run the speech tokenizer"):
            await decoder_only.tokenize(speech(0.5, 0))
        await decoder_only.close()

    asyncio.run(run())


def test_the_benchmarks_live_rules_reach_the_hosts_scheduler() -> None:
    from glm4voice_api.config import SpeechDecoderSettings
    from glm4voice_api.pipeline.decoder_rules import apply_rules

    options = SpeechDecoderSettings.model_validate(SETTINGS.speech_decoder.model_dump() | {"ode_steps": 3})
    local = _build_scheduler(SETTINGS, TINY, "cpu")

    async def audio(decoder) -> np.ndarray:
        stream = decoder.open_stream(live=True)
        stream.push(TOKENS, final=True)
        out = np.concatenate([c async for c in stream.audio()])
        stream.close()
        return out

    async def run() -> None:
        remote = RemoteDecoder()
        await remote.start(launch, spec(), timeout_s=120)
        try:
            before = await audio(remote)
            deadline = time.monotonic() + 10
            while True:  # the scheduler frees a closed stream's session on its own thread, a moment later
                try:
                    await remote.apply_rules(options.model_dump_json())
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            apply_rules(local, options)
            after = await audio(remote)
            np.testing.assert_array_equal(after, await audio(local))  # 3 ODE steps there as here
            assert np.abs(after - before).max() > 1e-3  # and not the 5 it started with
            open_one = remote.open_stream(live=True)
            with pytest.raises(RuntimeError, match="streams are open"):  # refused as the local scheduler refuses
                await remote.apply_rules(options.model_dump_json())
            open_one.close()
        finally:
            await remote.close()
            await local.close()

    asyncio.run(run())


def test_the_benchmarks_gpu_profile_comes_from_the_host() -> None:
    """The host runs `gpu_profile.profile_window` in its own process (vLLM's, on a GPU); without CUDA the answer is
    an error entry, and the host goes on serving."""

    async def run() -> None:
        remote = RemoteDecoder()
        await remote.start(launch, spec(), timeout_s=120)
        try:
            got = await remote.profile_gpu(0.01)
            assert "error" in got and remote.alive
        finally:
            await remote.close()

    asyncio.run(run())
