"""Response helpers: SSE for streams (with the OpenAI `[DONE]` and mid-stream error frame) and disconnect races."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from glm4voice_api.errors import APIError, server_error, store_unavailable
from glm4voice_api.store import StoreUnavailable

T = TypeVar("T")


def sse_response(events: AsyncIterator[BaseModel], *, done_marker: bool = True) -> EventSourceResponse:
    """Each event as `data: <json>`; a failure after the first byte becomes one `{"error": ...}` frame."""

    async def frames() -> AsyncIterator[dict]:
        try:
            async for event in events:
                yield {"data": event.model_dump_json()}
        except APIError as exc:
            yield {"data": json.dumps(exc.to_dict())}
            return
        except StoreUnavailable:
            yield {"data": json.dumps(store_unavailable().to_dict())}
            return
        except Exception:
            logging.getLogger(__name__).exception("stream failed")
            yield {"data": json.dumps(server_error().to_dict())}
            return
        if done_marker:
            yield {"data": "[DONE]"}

    return EventSourceResponse(frames(), sep="\n", ping=15)


class ClientDisconnectedError(Exception):
    """The client went away before the response was ready."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Race a non-streaming handler against the client's disconnect, cancelling (and so aborting) the work."""
    handler = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if handler.done():
        return handler.result()
    handler.cancel()
    try:
        await handler
    except asyncio.CancelledError:
        pass
    raise ClientDisconnectedError
