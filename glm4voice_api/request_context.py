"""The request being served, as a context variable: its id and tenant for every log line, its admission lease.

Set once per HTTP request by the app's middleware; asyncio tasks started while serving the request (the SSE
producer, the decoder feeder) copy it, so log lines written anywhere below carry the request's id and tenant.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TENANT = "default"


@dataclass
class RequestContext:
    request_id: str
    state: dict = field(default_factory=dict)
    """The ASGI scope's state: the auth layer sets `tenant` there once the caller is known."""
    lease: Any = None
    """The admission lease (serving.admission.Lease) while the request holds one."""
    received: float = field(default_factory=time.monotonic)
    """When the request arrived (time.monotonic): latencies a client sees (first audio) count from here, so time
    spent in the admission queue, reading the body and preparing the prompt is part of them."""
    deadline: float | None = None
    """The end of the request's whole-reply time limit (event loop time), set when its work begins (preparation:
    audio decoded and tokenized), so that preparation and generation share `timeouts.request_s`."""

    @property
    def tenant(self) -> str:
        return self.state.get("tenant") or DEFAULT_TENANT


_current: ContextVar[RequestContext | None] = ContextVar("glm4voice_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def bind_request(context: RequestContext) -> object:
    """Make `context` current; returns the token for `unbind_request`."""
    return _current.set(context)


def unbind_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def request_received() -> float:
    """When the current request arrived (time.monotonic; now, outside a request)."""
    context = _current.get()
    return context.received if context is not None else time.monotonic()
