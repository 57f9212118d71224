"""Run the server with uvicorn, draining on SIGTERM/SIGINT.

uvicorn's own shutdown stops listening at once and then only waits for connections; a voice stream may run for
minutes. So the first SIGTERM (or Ctrl-C) starts the app's drain instead: readiness and new requests answer 503
(the listener stays open, so clients get a retryable answer rather than a refused connection), running requests
go on for up to `timeouts.drain_s`, then the rest are aborted (engine requests aborted, decoder sessions freed).
Only then does uvicorn shut down (close the listener and idle connections, run the lifespan's shutdown, which
stops the engine) and the process exits with status 0. A second signal exits at once.

The listening address is taken before anything loads (`reserve_listeners`): a port already in use ends the process
at once with status 4 (`EXIT_CANNOT_LISTEN`) instead of after the engine's tens of seconds of start, and nothing else
(another process picking a free port meanwhile) can take the port while the models load. The sockets are bound but
not listening until the app is ready, so a connection before then is refused, as before.

Kubernetes: terminationGracePeriodSeconds >= timeouts.drain_s + ~15 s (abort, engine shutdown).

A signal while the server is still starting (loading models, starting the engine: tens of seconds) stops it at once:
there is nothing to drain. When the engine dies while serving (its process killed or crashed), the app answers every
request with a 503 at once and marks itself failed; the server then exits with status 3 (`EXIT_ENGINE_DEAD`), so a
supervisor (Kubernetes, systemd) starts a new one instead of keeping a process that can never serve again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from glm4voice_api.app import create_app, drain
from glm4voice_api.config import Settings
from glm4voice_api.http_protocol import HEADER_TIMEOUT_ATTR, BoundedH11Protocol
from glm4voice_api.logs import configure_logging
from glm4voice_api.settings_tree import unknown_env_names

logger = logging.getLogger(__name__)
_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_ENGINE_DEAD = 3
"""Exit status when the engine died while serving (a supervisor restarts the server)."""
EXIT_CANNOT_LISTEN = 4
"""Exit status when the listening address cannot be bound (in use, not ours): before any model loads."""
FATAL_GRACE_S = 5.0
"""After the engine died: how long the in-flight requests' errors may take to be written before the exit."""


def _exit_now(status: int, known: tuple = ()) -> None:
    """Exit at once, the engine core and any other child process with it (they would outlive os._exit); `known`:
    processes seen earlier (an engine core's workers are no longer our descendants once the core died)."""
    import psutil  # a vLLM dependency

    stop_descendants(psutil.Process(), known)
    logging.shutdown()
    os._exit(status)


def stop_descendants(root: object, known: tuple = (), rounds: int = 20) -> set:
    """Kill every descendant of `root` (a psutil.Process) and the `known` processes; returns the processes killed.

    Stopped first, killed after: a process killed while it forks (vLLM's engine core starting its worker, the
    moment a SIGTERM during startup often hits) can leave a child that was not there when the list was read, and
    that orphan then outlives the server. A stopped process cannot fork, so the list is read again until it stops
    growing, and only then is everything killed (SIGKILL ends stopped processes too)."""
    import psutil

    seen: set = set(known)
    for _ in range(rounds):
        try:
            new = set(root.children(recursive=True)) - seen  # type: ignore[attr-defined]
        except psutil.Error:
            new = set()
        for process in new:
            try:
                process.suspend()
            except psutil.Error:
                pass
        # SIGSTOP lands asynchronously: until a process has really stopped it can still fork, and a child it forks
        # after the next read would be missed (a clean-clone CI run caught one). So wait for the stop first.
        _wait_stopped(new)
        seen |= new
        if not new:
            break
    for process in seen:
        try:
            process.kill()
        except psutil.Error:
            pass
    return seen


def _wait_stopped(processes: set, timeout_s: float = 1.0) -> None:
    """Until every one of `processes` is stopped (or gone), at most `timeout_s`."""
    import psutil

    deadline = time.monotonic() + timeout_s
    waiting = set(processes)
    while waiting and time.monotonic() < deadline:
        for process in list(waiting):
            try:
                if process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE):
                    waiting.discard(process)
            except psutil.Error:  # gone
                waiting.discard(process)
        if waiting:
            time.sleep(0.002)


def reserve_listeners(host: str, port: int) -> list[socket.socket]:
    """Bind (without listening) every address `host` resolves to, as asyncio's create_server would; raises OSError.

    Bound and not listening: the port is ours, and a connection to it is refused until uvicorn listens once the app
    is ready (`listen_on`). Bound with SO_REUSEADDR (a restart must not wait for the last run's connections in
    TIME_WAIT), which is then cleared: Linux lets any other SO_REUSEADDR socket (libzmq's, asyncio's, a second
    server's) bind a port whose sockets all allow reuse while none listens, and our listen() would then fail.
    Processes forked meanwhile (vLLM's engine core) get the sockets closed in the child: a copy there would keep
    the port, and a drained server's listener, open after this process closed its own."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this kernel lacks (IPv6 disabled): skipped, as asyncio skips it
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 twin binds on its own
            sock.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        if not sockets:
            raise OSError(f"no address of {host!r} can be bound on this machine")
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    os.register_at_fork(after_in_child=lambda: [sock.close() for sock in sockets])
    return sockets


def listen_on(sockets: list[socket.socket]) -> None:
    """Allow reuse again just before uvicorn listens: listen() checks the port once more, and without SO_REUSEADDR
    it would fail while connections of a previous run are still in TIME_WAIT."""
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def not_listening(sockets: list[socket.socket]) -> list[str]:
    """The addresses among `sockets` that are not listening (uvloop's create_server(sock=...) can fail to listen
    without raising: the server would then run and serve nothing)."""
    return [str(s.getsockname()) for s in sockets if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None
        self._fatal: asyncio.Task | None = None
        self.processes: tuple = ()

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in _DRAIN_SIGNALS and not self.started:
            # Still loading: nothing runs that a drain could wait for, and loading would go on for tens of seconds.
            logger.warning("received %s while starting: stopping now", signal.Signals(sig).name)
            _exit_now(0)
        if sig in _DRAIN_SIGNALS and self._drain is None and not self.should_exit and self._loop is not None:
            # Not recorded as a captured signal: uvicorn re-raises those after shutdown, which would end the
            # process by the signal (status -15) instead of a clean exit after a completed drain.
            self._loop.call_soon_threadsafe(self._start_drain, sig)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self, sig: int) -> None:
        if self._drain is None:
            logger.info("received %s: draining", signal.Signals(sig).name)
            self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def startup(self, sockets: list | None = None) -> None:
        if sockets:
            listen_on(sockets)
        await super().startup(sockets)
        import psutil

        self.processes = tuple(psutil.Process().children(recursive=True))  # vLLM's engine core and its workers
        if sockets and (idle := not_listening(sockets)):
            logger.critical("not listening on %s (the port was taken): exiting", ", ".join(idle))
            _exit_now(EXIT_CANNOT_LISTEN, self.processes)

    async def on_tick(self, counter: int) -> bool:
        if getattr(self.app.state, "fatal", None) and self._fatal is None:
            self._fatal = asyncio.ensure_future(self._fatal_exit())
        return await super().on_tick(counter)

    async def _fatal_exit(self) -> None:
        # The engine's failure reached every in-flight request at once (each answers its 503 or error event); give
        # them a moment to be written, then shut down: serve() exits non-zero.
        services = self.app.state.services
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FATAL_GRACE_S
        while services is not None and services.admission.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.1)
        self.should_exit = True

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.app)
        except Exception:
            logger.exception("drain failed")
        finally:
            self.should_exit = True


def serve(settings: Settings) -> None:
    configure_logging(settings.log.level, settings.log.format)
    try:
        sockets = reserve_listeners(settings.host, settings.port)
    except OSError as exc:
        logger.critical("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        sys.exit(EXIT_CANNOT_LISTEN)
    logger.info("port taken: %s (listening once ready)", ", ".join(str(s.getsockname()[:2]) for s in sockets))
    if unknown := unknown_env_names(os.environ):
        logger.warning("not settings of this server, ignored: %s (see --help for the names)", ", ".join(unknown))
    if settings.port == 0:  # the kernel picked it: what the app reports (its "ready" line) is the real one
        settings = settings.model_copy(update={"port": sockets[0].getsockname()[1]})
    app = create_app(settings)
    limits, timeouts = settings.request_limits, settings.timeouts
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Connection limits (http_protocol.py says why h11): the head's size and time, idle keep-alive connections,
        # connections per process. What sits in front in production (README) bounds the rest.
        http=BoundedH11Protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=int(max(1, timeouts.keep_alive_s)),
        limit_concurrency=limits.max_connections or None,
        log_level=settings.log.level.lower(),
        log_config=None,  # our handler on the root logger formats uvicorn's lines too (logs.py)
        access_log=False,  # the app writes its own access line, with request id and tenant
        # After the drain nothing of ours is running; this bounds what is left (idle keep-alive, other routes).
        timeout_graceful_shutdown=5,
        # Realtime events up to the cap get an `error` event when too large; far beyond it the socket closes (1009).
        ws_max_size=2 * settings.realtime.max_event_bytes,
    )
    setattr(config, HEADER_TIMEOUT_ATTR, timeouts.header_s)
    server = DrainingServer(config, app)
    server.run(sockets)
    if fatal := getattr(app.state, "fatal", None):
        logger.critical("exiting with status %d: %s", EXIT_ENGINE_DEAD, fatal)
        _exit_now(EXIT_ENGINE_DEAD, server.processes)
