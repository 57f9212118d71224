"""Engine failures mapped to API errors, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from glm4voice_api.engine.base import EngineDeadError, EngineRequestError
from glm4voice_api.errors import invalid_request, unavailable


@asynccontextmanager
async def engine_errors() -> AsyncIterator[None]:
    try:
        yield
    except EngineRequestError as exc:
        raise invalid_request(f"The request was rejected: {exc}") from exc
    except EngineDeadError as exc:
        raise unavailable("The model engine is not available; try again later.") from exc
