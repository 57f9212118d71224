"""The options beside the defaults, through the real server on the CPU: the in-process engine (vLLM's engine core in
the server process, one CUDA context with the speech decoder on a GPU) with adaptive chunking. A spoken reply
streams, a disconnect aborts its engine request and frees its decoder session, and the admission limit and decoder
underruns are exported."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import RunningServer, hang_up_at_first_audio, start_server, stop_server, wait_all_freed

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("inproc")]


@pytest.fixture(scope="module")
def inproc(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("inproc")
    running = start_server(cache_dir, tmp / "server.log", "--engine.process", "inproc", "--speech-decoder.chunking", "adaptive",
                           "--store", f"sqlite:///{tmp / 'store.sqlite3'}")  # fmt: skip
    yield running
    stop_server(running)


def test_spoken_reply_streams_and_a_disconnect_frees_everything(inproc: RunningServer) -> None:
    assert "engine core in this process" in inproc.log()
    client = inproc.client()
    stream = client.chat.completions.create(
        model="glm-4-voice-9b", messages=[{"role": "user", "content": "Hello"}], stream=True, max_tokens=78,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
    )  # fmt: skip
    pieces = [getattr(getattr(c.choices[0].delta, "audio", None), "data", None) for c in stream if c.choices]
    audio = b"".join(base64.b64decode(p) for p in pieces if p)
    assert len(audio) > 24000  # more than half a second of pcm16 at 24 kHz

    body = {
        "model": "glm-4-voice-9b",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "max_tokens": 400,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
    }
    hang_up_at_first_audio(inproc, body)
    wait_all_freed(inproc)
    assert inproc.metric("glm4voice_engine_aborted_requests_total") >= 1
    assert inproc.metric("glm4voice_admission_limit") >= 1  # CPU: the engine's batch size, not measured
    assert inproc.metric("glm4voice_decoder_underruns_total") >= 0
    assert inproc.metric("glm4voice_event_loop_lag_seconds_count") > 0  # the loop watch runs in the app
    # The startup heap is out of the collector's reach, and every collection since is timed (serving/gc_heap.py).
    assert re.search(r"gc: \d+ startup objects frozen", inproc.log())
    assert inproc.metric("glm4voice_gc_pause_seconds_count") > 0
    # The GIL's contenders, by thread: the in-process engine's own thread among them.
    assert all(inproc.metric("glm4voice_thread_cpu_seconds_total", f'thread="{t}"') > 0 for t in ("main", "engine"))
    assert inproc.metric("glm4voice_thread_cpu_seconds_total", 'thread="decoder"') > 0
