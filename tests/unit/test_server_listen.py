"""The listening address is taken before anything loads (`server.reserve_listeners`): a port in use ends `serve`
at once with EXIT_CANNOT_LISTEN, and a port taken is refused to others (and to connections) while the models load."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

from glm4voice_api.server import EXIT_CANNOT_LISTEN, listen_on, not_listening, reserve_listeners


def test_reserved_port_is_bound_not_listening_and_not_left_in_a_forked_child() -> None:
    sockets = reserve_listeners("127.0.0.1", 0)
    try:
        port = sockets[0].getsockname()[1]
        # Another process binding it is refused, with SO_REUSEADDR too (libzmq, asyncio, a second server set it;
        # Linux lets such sockets share a port that no socket listens on, and our listen() would then fail).
        for reuse in (0, 1):
            with pytest.raises(OSError) as taken, socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                other.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as taken:
            reserve_listeners("127.0.0.1", port)
        assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(ConnectionRefusedError):  # bound, not listening: refused until the app is ready
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # A forked child (as vLLM's engine core) does not keep the socket: its copy is closed at the fork.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write, b"1" if sockets[0].fileno() == -1 else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1"
        os.close(read)
        os.close(write)
    finally:
        for sock in sockets:
            sock.close()


def test_listening_after_a_previous_run_left_connections_in_time_wait() -> None:
    # A restart on the same port: the last run's accepted connections (closed by the server first) sit in
    # TIME_WAIT. Binding and listening must still work, and `not_listening` sees the listener.
    first = reserve_listeners("127.0.0.1", 0)
    port = first[0].getsockname()[1]
    listen_on(first)
    first[0].listen()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = first[0].accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    first[0].close()
    again = reserve_listeners("127.0.0.1", port)
    try:
        assert not_listening(again) == [str(again[0].getsockname())]
        listen_on(again)
        again[0].listen()
        assert not_listening(again) == []
    finally:
        for sock in again:
            sock.close()


def test_serve_on_a_port_in_use_exits_before_loading(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "glm4voice_api", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--cache-dir", str(tmp_path)],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == EXIT_CANNOT_LISTEN, done.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Initializing" not in done.stderr  # no engine was started
    assert time.monotonic() - started < 60
