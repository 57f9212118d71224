"""deploy/haproxy: HAProxy itself accepts the configuration, and its own error pages are OpenAI error envelopes
(the end-to-end behaviour is tests/api/test_replicas.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HAPROXY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "haproxy"


def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.fail("haproxy not found: `scripts/install.sh test` installs it (apt package haproxy)")
    env = {**os.environ, "GLM4VOICE_LB_BIND": "127.0.0.1:8080", "GLM4VOICE_REPLICA_1": "127.0.0.1:8001",
           "GLM4VOICE_REPLICA_2": "127.0.0.1:8002", "GLM4VOICE_LB_ERRORS": str(HAPROXY_DIR / "errors"),
           "GLM4VOICE_LB_STATS_SOCKET": str(tmp_path / "haproxy.sock")}  # fmt: skip
    result = subprocess.run([exe, "-c", "-f", str(HAPROXY_DIR / "haproxy.cfg")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr


@pytest.mark.parametrize("status", [502, 503, 504])
def test_error_pages_are_openai_envelopes(status: int) -> None:
    head, _, body = (HAPROXY_DIR / "errors" / f"{status}.http").read_bytes().partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.0 {status} ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json" and int(headers["Retry-After"]) >= 1
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
