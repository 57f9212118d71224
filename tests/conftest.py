"""Shared fixtures: the tiny random-weight checkpoint set (created once per test session and machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.api.conftest import RunningServer

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance"


@pytest.fixture(scope="session")
def conformance() -> Path:
    """The conformance goldens (`../shared/conformance`, relative to the checkout). Missing data fails the tests that
    need it rather than skipping them: a skipped conformance test would let any model change pass unnoticed."""
    if not (CONFORMANCE / "tiny_a" / "golden").is_dir():
        pytest.fail(f"conformance data not found at {CONFORMANCE} (the checkout's ../shared/conformance)")
    return CONFORMANCE


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
    from tests.redis_server import RedisServer

    try:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()
