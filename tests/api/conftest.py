"""The real server (uvicorn on loopback, real vLLM CPU engine) on the built-in default, shared by the API tests.

All tests that use it are in the xdist group "server", so one worker owns the one server process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

STARTUP_TIMEOUT_S = 420
EXIT_CANNOT_LISTEN = 4
"""The server's exit status when its port is taken (glm4voice_api/server.py)."""


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    relaunch: Callable[[], RunningServer] | None = None
    """Start the same server on another free port (only when the port was picked here, not given)."""

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0, **kwargs)

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of one metric on /metrics (optionally only lines containing `labels`)."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def delta_audio(delta) -> dict:
    """`delta.audio` of a streamed chunk as a dict, whether this SDK version types it or keeps it as an extra field."""
    audio = getattr(delta, "audio", None) or (delta.model_extra or {}).get("audio")
    if audio is None:
        return {}
    return audio if isinstance(audio, dict) else audio.model_dump(exclude_none=True)


def hang_up_at_first_audio(server: RunningServer, body: dict) -> None:
    """Stream a chat completion over plain HTTP and disconnect as soon as its first audio arrives (mid-reply)."""
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if '"data":"' in line.replace(" ", ""):
                return


def wait_all_freed(server: RunningServer, timeout_s: float = 30) -> None:
    """Wait until no engine request and no decoder session is left, then assert it (a leak fails here)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (
        server.metric("glm4voice_engine_active_requests") or server.metric("glm4voice_decoder_active_sessions")
    ):
        time.sleep(0.2)
    assert server.metric("glm4voice_engine_active_requests") == 0
    assert server.metric("glm4voice_decoder_active_sessions") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(
    cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None, port: int | None = None
) -> RunningServer:
    """Start the server process (on `port`, else a free one) without waiting for it: see wait_ready."""
    relaunch = None if port else (lambda: launch_server(cache_dir, log_path, *extra, env=env))
    port = port or _free_port()
    serve = [sys.executable, "-m", "glm4voice_api", "serve", "--host", "127.0.0.1", "--port", str(port)]
    small = ["--engine.max-model-len", "1024", "--engine.max-num-seqs", "8", "--engine.warmup-batch-sizes", "1"]
    cmd = [*serve, "--cache-dir", str(cache_dir), *small, *extra]
    log = log_path.open("w")
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )
    return RunningServer(f"http://127.0.0.1:{port}", process, log_path, relaunch)


def wait_ready(server: RunningServer, timeout_s: float = STARTUP_TIMEOUT_S, retries: int = 3) -> RunningServer:
    """Wait for /health/ready; a server that exits or never gets ready is stopped and raises with its log's end.

    The free port was free when picked; another process (a parallel test's engine picking its own ports) can take
    it before the server binds it, and the server then exits at once with EXIT_CANNOT_LISTEN: it is started again on
    another port (the returned server)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() == EXIT_CANNOT_LISTEN and server.relaunch is not None and retries > 0:
            server, retries = server.relaunch(), retries - 1
            continue
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.base_url + "/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{server.log()[-4000:]}")


def start_server(cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None) -> RunningServer:
    return wait_ready(launch_server(cache_dir, log_path, *extra, env=env))


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
