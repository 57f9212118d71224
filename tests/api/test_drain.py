"""SIGTERM drain on the real server: readiness and new requests answer 503 at once, the running stream finishes or is
aborted at timeouts.drain_s (with its error event), nothing is left in the engine, and the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import start_server, stop_server

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]

DRAIN_S = 4


def test_sigterm_drains_running_streams_then_exits_cleanly(cache_dir: Path, tmp_path: Path) -> None:
    server = start_server(cache_dir, tmp_path / "server.log", "--timeouts.drain-s", str(DRAIN_S))
    audio, checked = threading.Event(), threading.Event()
    try:
        outcome: dict = {}
        body = {
            "model": "glm-4-voice-9b",
            "messages": [{"role": "user", "content": "A long answer"}],
            "stream": True,
            "max_tokens": 780,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
        }

        def long_stream() -> None:
            with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=120) as response:
                outcome["status"] = response.status_code
                for line in response.iter_lines():
                    if '"data":' in line and not audio.is_set():
                        audio.set()
                        # Stop reading until the refusal below is checked: the server's sends then fill the socket
                        # and its stream cannot end (nor the drained server exit) before that request is answered,
                        # however fast the rest of the answer is generated (a loaded CI machine once got there).
                        checked.wait(60)
                    if line == "data: [DONE]":
                        outcome["done"] = True
                    elif line.startswith("data: ") and '"error"' in line:
                        outcome["error"] = json.loads(line[6:])["error"]
            outcome["ended"] = True

        stream = threading.Thread(target=long_stream)
        stream.start()
        assert audio.wait(120), f"no audio before the signal: {outcome}"
        # The main process only, as an orchestrator does (the engine core is its child and is stopped by it).
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(server.base_url + "/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = httpx.post(server.base_url + "/v1/chat/completions", json={**body, "stream": False}, timeout=10)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "server_shutting_down"
        checked.set()

        stream.join(DRAIN_S + 60)
        assert outcome.get("ended"), "the stream did not end"
        # Finished within the drain, or aborted at its end with an error event (never cut off silently).
        assert outcome.get("done") or outcome["error"]["code"] == "server_shutting_down", outcome
        assert server.process.wait(timeout=DRAIN_S + 90) == 0
        log = server.log()
        assert '"message": "received SIGTERM: draining"' in log
        if "error" in outcome:
            assert "drain timeout: aborting 1 request(s)" in log
        assert "drained: 0 request(s) left" in log
    finally:
        checked.set()
        stop_server(server)
