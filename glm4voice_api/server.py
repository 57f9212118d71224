"""Run the server with uvicorn, draining on SIGTERM/SIGINT.

uvicorn's own shutdown stops listening at once and then only waits for connections; a voice stream may run for
minutes. So the first SIGTERM (or Ctrl-C) starts the app's drain instead: readiness and new requests answer 503
(the listener stays open, so clients get a retryable answer rather than a refused connection), running requests
go on for up to `timeouts.drain_s`, then the rest are aborted (engine requests aborted, decoder sessions freed).
Only then does uvicorn shut down (close the listener and idle connections, run the lifespan's shutdown, which
stops the engine) and the process exits with status 0. A second signal exits at once.

Kubernetes: terminationGracePeriodSeconds >= timeouts.drain_s + ~15 s (abort, engine shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from glm4voice_api.app import create_app, drain
from glm4voice_api.config import Settings
from glm4voice_api.logs import configure_logging

logger = logging.getLogger(__name__)
_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
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

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self.app)
        except Exception:
            logger.exception("drain failed")
        finally:
            self.should_exit = True


def serve(settings: Settings) -> None:
    configure_logging(settings.log.level, settings.log.format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log.level.lower(),
        log_config=None,  # our handler on the root logger formats uvicorn's lines too (logs.py)
        access_log=False,  # the app writes its own access line, with request id and tenant
        # After the drain nothing of ours is running; this bounds what is left (idle keep-alive, other routes).
        timeout_graceful_shutdown=5,
        # Realtime events up to the cap get an `error` event when too large; far beyond it the socket closes (1009).
        ws_max_size=2 * settings.realtime.max_event_bytes,
    )
    DrainingServer(config, app).run()
