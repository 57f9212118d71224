"""Shared fixtures: the tiny random-weight checkpoint set (created once per test session and machine)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.api.conftest import RunningServer

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance"


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """One cache for all workers: the default set is built once (file-locked) and reused."""
    path = Path(os.environ.get("GLM4VOICE_TEST_CACHE", REPO / ".cache" / "test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_set(cache_dir: Path) -> Path:
    from glm4voice_api.random_checkpoints.default import ensure_default_checkpoints

    return ensure_default_checkpoints(cache_dir)


@pytest.fixture(scope="session")
def tiny_llm_dir(default_set: Path) -> Path:
    return default_set / "glm-4-voice-9b"


@pytest.fixture(scope="session")
def server(default_set: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The one real server of the session (tests/api/conftest.py), shared by tests/api and tests/web."""
    from tests.api.conftest import start_server, stop_server

    running = start_server(cache_dir, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (no persistence) on a free port for this test session; `redis://127.0.0.1:PORT`.

    Tests pick their own database number (`/N`) or namespace so they never see each other's keys.
    """
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not found: `scripts/install.sh test` installs it (apt package redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder),
         "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    pytest.fail(f"redis-server exited with {process.returncode}")
                time.sleep(0.1)
        else:
            pytest.fail("redis-server did not answer within 10 s")
        yield url
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
