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
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

STARTUP_TIMEOUT_S = 420


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log_path: Path

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None) -> RunningServer:
    port = _free_port()
    cmd = [sys.executable, "-m", "glm4voice_api", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--cache-dir", str(cache_dir), "--max-model-len", "1024", "--max-num-seqs", "8",
           "--warmup-batch-sizes", "1", *extra]  # fmt: skip
    log = log_path.open("w")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)  # fmt: skip
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.base_url + "/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n{server.log()[-4000:]}")


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
