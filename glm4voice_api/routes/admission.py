"""The admission dependency: a route that runs model work holds a lease for the whole life of its response.

FastAPI leaves a dependency with `yield` after the response has been sent (the default "request" scope), streamed
bodies included, and on every way out: the end of the stream, an error, the client going away. (From FastAPI 0.118
on, which pyproject.toml requires: 0.106 to 0.117 left it before a streamed body was sent, releasing the lease at once;
tests/api/test_hardening.py checks the slot is held while a stream runs.) So the lease is
released exactly when the response ends. While a request waits in the admission queue the client's disconnect is
watched too: a client that gives up stops waiting at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from glm4voice_api.request_context import DEFAULT_TENANT, current_request
from glm4voice_api.routes.deps import ServicesDep
from glm4voice_api.routes.streaming import ClientDisconnectedError
from glm4voice_api.serving.admission import Lease


async def _admit_or_disconnect(request: Request, services: ServicesDep, tenant: str) -> Lease:
    admit = asyncio.ensure_future(services.admission.admit(tenant))

    async def disconnected() -> None:
        # The body has been read already (FastAPI reads it before solving dependencies): only a disconnect can come.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({admit, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not admit.done():
            admit.cancel()
    try:
        return await admit  # admitted, refused (429/503), or cancelled because the client left
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnectedError from None
        raise


async def admitted(request: Request, services: ServicesDep) -> AsyncIterator[Lease]:
    tenant = getattr(request.state, "tenant", None) or DEFAULT_TENANT
    lease = await _admit_or_disconnect(request, services, tenant)
    context = current_request()
    if context is not None:
        context.lease = lease
    try:
        yield lease
    finally:
        lease.release()


AdmittedDep = Annotated[Lease, Depends(admitted)]
