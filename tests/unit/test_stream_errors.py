"""A failure after a stream's first byte becomes one `{"error": ...}` frame: an unreachable store is the retryable
503-kind `store_unavailable`, anything else a 500-kind `internal_error`; neither is followed by [DONE]."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from glm4voice_api.routes.streaming import sse_response
from glm4voice_api.store import StoreUnavailable


class Event(BaseModel):
    n: int


def _app(failure: Exception) -> FastAPI:
    app = FastAPI()

    async def events() -> AsyncIterator[Event]:
        yield Event(n=1)
        raise failure

    @app.get("/stream")
    async def stream():
        return sse_response(events())

    return app


@pytest.mark.parametrize(("failure", "code"), [(StoreUnavailable("the store at redis://x is unavailable"),
                                                 "store_unavailable"), (RuntimeError("boom"), "internal_error")])  # fmt: skip
async def test_mid_stream_failure_is_one_error_frame(failure: Exception, code: str) -> None:
    transport = httpx.ASGITransport(app=_app(failure))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body = (await client.get("/stream")).text
    frames = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert json.loads(frames[0]) == {"n": 1}
    assert json.loads(frames[1])["error"]["code"] == code
    assert "redis" not in frames[1]
    assert len(frames) == 2  # no [DONE] after an error
