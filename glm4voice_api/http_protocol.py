"""uvicorn's h11 protocol with the limits a server facing the internet needs on every connection.

httptools (uvicorn's default parser) has no limit on the size of a request's head: a 400 MiB `Authorization` header
was read whole into memory before its 401. h11 refuses a head that grows beyond `h11_max_incomplete_event_size` while
it arrives (a 400; one that arrives whole in one read is refused by the app, a 431). Neither times out a client that
sends its head slowly: thousands of idle half-sent requests held every file descriptor. This protocol closes a
connection whose head has not arrived `timeouts.header_s` after the connection (or the previous response) began.
Body reads are bounded in the app (`timeouts.body_idle_s`, a 408), connections per process by uvicorn's
`limit_concurrency` (503 beyond it).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ATTR = "glm4voice_header_timeout_s"
"""The attribute of uvicorn's Config the protocol reads its header timeout from (set by server.serve)."""


class BoundedH11Protocol(H11Protocol):
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection is done)
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head is bounded too, however slowly it trickles in

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        timeout = getattr(self.config, HEADER_TIMEOUT_ATTR, None)
        if timeout:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
