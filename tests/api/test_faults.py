"""Faults of the whole process, on real servers: SIGTERM while loading stops at once; vLLM's engine core killed while
serving ends the requests with an error and the server exits non-zero, for a supervisor to restart it."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.conftest import EXIT_CANNOT_LISTEN, RunningServer, launch_server, stop_server, wait_ready

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
EXIT_ENGINE_DEAD = 3


def _group_alive(server: RunningServer) -> bool:
    """Whether any process of the server's own process group (the server, its engine core) still runs."""
    try:
        os.killpg(server.process.pid, 0)
    except ProcessLookupError:
        return False
    return any(p.status() != psutil.STATUS_ZOMBIE for p in psutil.process_iter() if _in_group(p, server.process.pid))


def _in_group(process: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(process.pid) == pgid
    except (ProcessLookupError, psutil.Error):
        return False


def _describe_group(server: RunningServer) -> list[str]:
    out = []
    for p in psutil.process_iter():
        if _in_group(p, server.process.pid):
            try:
                out.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())}")
            except psutil.Error as exc:
                out.append(f"{p.pid} {exc!r}")
    return out


def _wait_for_log(server: RunningServer, text: str, timeout_s: float, retries: int = 3) -> RunningServer:
    """Wait until the server logs `text`; a server whose picked port was taken before it bound it (exit 4, see
    conftest.wait_ready) is started again on another port, and the server that logged it is returned."""
    deadline = time.monotonic() + timeout_s
    first = server
    try:
        while text not in server.log():
            if server.process.poll() == EXIT_CANNOT_LISTEN and server.relaunch is not None and retries > 0:
                server, retries = server.relaunch(), retries - 1
                continue
            assert server.process.poll() is None, server.log()[-3000:]
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log()[-3000:]}"
            time.sleep(0.2)
    except BaseException:
        if server is not first:  # the caller only knows the first server
            stop_server(server)
        raise
    return server


def test_sigterm_while_loading_stops_at_once(default_set: Path, cache_dir: Path, tmp_path: Path) -> None:
    server = launch_server(cache_dir, tmp_path / "server.log")
    try:
        server = _wait_for_log(server, "Initializing a V1 LLM engine", 300)  # the engine core process is starting
        # The port is the server's from the start (no other process can take it while it loads), and refuses
        # connections until the app is ready.
        port = int(server.base_url.rsplit(":", 1)[1])
        with pytest.raises(OSError), socket.socket() as other:
            other.bind(("127.0.0.1", port))
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.base_url + "/health", timeout=5)
        server.process.send_signal(signal.SIGTERM)
        # Not after the rest of the loading (a minute here) and a drain: at once, the engine core with it.
        server.process.wait(timeout=20)
        deadline = time.monotonic() + 10
        while _group_alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(server), "a child process outlived the server"
    finally:
        stop_server(server)


def test_engine_core_killed_ends_requests_and_exits_non_zero(
    default_set: Path, cache_dir: Path, tmp_path: Path
) -> None:
    server = wait_ready(launch_server(cache_dir, tmp_path / "server.log"))
    try:
        cores = [
            p
            for p in psutil.Process(server.process.pid).children(recursive=True)
            if "EngineCore" in " ".join(p.cmdline())
        ]
        assert cores, "no engine core process found"
        outcome: dict = {}
        started = threading.Event()

        def stream() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 600, "stream": True}
            try:
                with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=120) as r:
                    for line in r.iter_lines():
                        started.set()
                        if line.startswith("data: {") and '"error"' in line:
                            outcome["error"] = json.loads(line[6:])["error"]
                        elif line == "data: [DONE]":
                            outcome["done"] = True
            except httpx.HTTPError as exc:
                outcome["broken"] = repr(exc)
            started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        for core in cores:
            core.kill()  # kill -9 of vLLM's engine core while a reply streams
        reader.join(60)
        # The running reply ends with an error (never as if it had finished), and the process exits non-zero.
        assert "done" not in outcome and ("error" in outcome or "broken" in outcome), outcome
        assert server.process.wait(timeout=90) == EXIT_ENGINE_DEAD, server.log()[-3000:]
        deadline = time.monotonic() + 20
        while _group_alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(server), _describe_group(server)
    finally:
        stop_server(server)
