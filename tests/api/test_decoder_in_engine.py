"""The speech decoder and tokenizer in vLLM's model process (`--speech-decoder.in-engine`,
`--speech-tokenizer.in-engine`, pipeline/decoder_host.py), through the real server on the CPU: a spoken reply sounds
as the local decoder makes it (the same tokens; the host process runs torch on fewer threads, so float sums may round
apart by one int16 step), a spoken question gets the same answer as from the local tokenizer, a disconnect frees the
host's session, and a configuration it cannot serve is refused before anything loads. (The decoder alone in the host:
tests/unit/test_remote_decoder.py, over the same sockets.)"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from glm4voice_api.audio.encode import encode_whole
from glm4voice_api.config import EngineSettings, Settings, SpeechDecoderSettings, SpeechTokenizerSettings
from tests.api.conftest import (
    RunningServer,
    delta_audio,
    hang_up_at_first_audio,
    start_server,
    stop_server,
    wait_all_freed,
)

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]  # beside the shared server: its reference

REQUEST = {
    "model": "glm-4-voice-9b",
    "messages": [{"role": "user", "content": "Hello there"}],
    "max_tokens": 120,
    "seed": 7,
    "temperature": 0,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "pcm16"},
}


@pytest.fixture(scope="module")
def in_engine(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("in_engine")
    running = start_server(cache_dir, tmp / "server.log", "--speech-decoder.in-engine", "--speech-tokenizer.in-engine")
    yield running
    stop_server(running)


def spoken(server: RunningServer) -> np.ndarray:
    stream = server.client().chat.completions.create(stream=True, **REQUEST)
    pieces = [delta_audio(c.choices[0].delta).get("data") for c in stream if c.choices]
    return np.frombuffer(b"".join(base64.b64decode(p) for p in pieces if p), np.int16).astype(np.int32)


def test_a_spoken_reply_sounds_as_the_local_decoder_makes_it(in_engine: RunningServer, server: RunningServer) -> None:
    assert "speech decoder and tokenizer in vLLM's model process" in in_engine.log()
    assert "speech tokenizer ready" in in_engine.log()  # logged by the host (vLLM's process), not by the API's
    hosted, local = spoken(in_engine), spoken(server)
    assert len(hosted) == len(local) > 24000  # the same chunks: more than a second of pcm16 at 24 kHz
    assert np.abs(hosted - local).max() <= 2  # float rounding of fewer torch threads, nothing else
    # The host's counters reach the API process (admission control and /metrics read them).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and in_engine.metric("glm4voice_decoder_active_sessions"):
        time.sleep(0.2)
    assert in_engine.metric("glm4voice_decoder_active_sessions") == 0
    # The lone reply's first chunk was decoded with vLLM's next step held (pipeline/llm_pause.py), and the audio above
    # is the local decoder's all the same; a decoder outside vLLM's process has no LLM step to hold.
    assert in_engine.metric("glm4voice_decoder_solo_passes_total") >= 1
    assert server.metric("glm4voice_decoder_solo_passes_total") == 0
    # vLLM's model process's threads on /metrics: its step loop and the decoder's thread there.
    for role in ("vllm_main", "vllm_decoder"):
        assert in_engine.metric("glm4voice_thread_cpu_seconds_total", f'thread="{role}"') > 0


def test_a_spoken_question_gets_the_answer_the_local_tokenizer_gives(
    in_engine: RunningServer, server: RunningServer
) -> None:
    t = np.arange(2 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    data = base64.b64encode(encode_whole("wav", tone, 16000)).decode()
    question = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}]
    body = {**REQUEST, "messages": question, "modalities": ["text"], "max_tokens": 40}
    hosted, local = (s.client().chat.completions.create(**body) for s in (in_engine, server))
    assert hosted.usage.prompt_tokens_details.audio_tokens == local.usage.prompt_tokens_details.audio_tokens == 25
    assert hosted.choices[0].message.content == local.choices[0].message.content  # same speech tokens in, same reply


def test_speech_and_a_disconnect_free_the_hosts_sessions(in_engine: RunningServer) -> None:
    speech = httpx.post(
        in_engine.base_url + "/v1/audio/speech",
        json={"model": "glm-4-voice-9b", "input": "Hi", "voice": "alloy", "response_format": "wav"},
        timeout=120,
    )
    assert speech.status_code == 200 and speech.content[:4] == b"RIFF" and len(speech.content) > 1000
    hang_up_at_first_audio(in_engine, {**REQUEST, "stream": True, "max_tokens": 400})
    wait_all_freed(in_engine)


def test_a_realtime_spoken_turn_through_the_hosted_models(in_engine: RunningServer) -> None:
    """Realtime, as the default runs it on one GPU: the committed question goes to the host's tokenizer, the answer's
    audio comes from the host's decoder, and the session's end frees the host's sessions."""
    import asyncio
    import json

    from tests.api.test_realtime import RATE, _frames, _next, _raw_session
    from tests.speech import silence, speech

    async def turn() -> tuple[dict, int]:
        ws = await _raw_session(in_engine)
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        await _next(ws, "session.updated")
        for frame in _frames(np.concatenate([speech("What is the weather like today", RATE), silence(0.3, RATE)])):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": frame}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await _next(ws, "input_audio_buffer.committed")
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 80}}))
        audio = 0
        while (event := await _next(ws, None))["type"] != "response.done":
            if event["type"] == "response.output_audio.delta":
                audio += len(base64.b64decode(event["delta"]))
        await ws.close()
        return event["response"], audio

    response, audio = asyncio.run(turn())
    assert response["status"] in ("completed", "incomplete"), response
    assert response["usage"]["input_token_details"]["audio_tokens"] > 0  # the question's speech tokens, from the host
    assert audio > 2 * RATE // 2  # more than half a second of pcm16 from the host's decoder
    wait_all_freed(in_engine)


def test_the_engine_warms_up_before_the_hosts_start_when_told_to(
    cache_dir: Path, tmp_path: Path, server: RunningServer
) -> None:
    """`--engine.warmup-beside-audio` (on by default: the engine's warm-up requests run while the host loads and
    prepares the audio models in vLLM's process; the `in_engine` server here starts that way) turned off: the old
    order, warm-up first, then the host; the server then answers as the default does."""
    before = start_server(
        cache_dir,
        tmp_path / "server.log",
        "--speech-decoder.in-engine",
        "--speech-tokenizer.in-engine",
        env={"GLM4VOICE_ENGINE__WARMUP_BESIDE_AUDIO": "false"},
    )
    try:
        log = before.log()
        assert log.index("engine warm-up done") < log.index("speech decoder host ready")
        hosted, local = spoken(before), spoken(server)
        assert len(hosted) == len(local) and np.abs(hosted - local).max() <= 2
    finally:
        stop_server(before)


@pytest.mark.parametrize(
    ("engine", "device"),
    [
        (EngineSettings(process="inproc"), "auto"),
        (EngineSettings(tensor_parallel_size=2), "auto"),
        (EngineSettings(), "all"),
    ],
)
def test_what_it_cannot_serve_is_refused_with_the_settings(engine: EngineSettings, device: str) -> None:
    for asked in ({"speech_decoder": SpeechDecoderSettings(in_engine=True)},
                  {"speech_tokenizer": SpeechTokenizerSettings(in_engine=True)}):  # fmt: skip
        with pytest.raises(ValidationError, match="in_engine needs one vLLM engine process"):
            Settings(engine=engine, audio_device=device, **asked)
    # Left to its default on a GPU, it stays in this process there.
    resolved = Settings(engine=engine, audio_device=device).resolved(cuda=True, model_seq_length=8192)
    assert resolved.speech_decoder.in_engine is False and resolved.speech_tokenizer.in_engine is False


def test_the_tokenizer_is_hosted_only_beside_the_decoder() -> None:
    with pytest.raises(ValidationError, match="speech_tokenizer.in_engine needs speech_decoder.in_engine"):
        Settings(
            speech_tokenizer=SpeechTokenizerSettings(in_engine=True),
            speech_decoder=SpeechDecoderSettings(in_engine=False),
        )


def hosted(cuda: bool, **settings: object) -> tuple[bool | None, bool | None]:
    resolved = Settings(**settings).resolved(cuda=cuda, model_seq_length=8192)
    return resolved.speech_decoder.in_engine, resolved.speech_tokenizer.in_engine


def test_on_one_gpu_both_audio_models_default_to_vllms_process() -> None:
    # Measured on an H100 (bench/results/GPU.md, session 21): the defaults' choice on one GPU.
    assert hosted(True) == (True, True)
    assert hosted(False) == (False, False)  # a CPU: the host would share vLLM's one bound core
    assert hosted(True, audio_device="cpu") == (False, False)  # the audio models asked off the GPU
    assert hosted(True, audio_device="cuda:1") == (False, False)  # ... or onto another GPU than vLLM's
    assert hosted(True, audio_device="cuda:0") == (True, True)
    # Either asked for by hand: the tokenizer follows the decoder unless it is set, and asks for the decoder.
    assert hosted(False, speech_decoder=SpeechDecoderSettings(in_engine=True)) == (True, True)
    assert hosted(True, speech_tokenizer=SpeechTokenizerSettings(in_engine=False)) == (True, False)
    assert hosted(False, speech_tokenizer=SpeechTokenizerSettings(in_engine=True)) == (True, True)
    assert hosted(True, speech_decoder=SpeechDecoderSettings(in_engine=False)) == (False, False)
