"""Engine failures mapped to API errors, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from glm4voice_api.audio.errors import AudioError
from glm4voice_api.engine.base import EngineDeadError, EngineRequestError
from glm4voice_api.errors import APIError, invalid_request, unavailable
from glm4voice_api.pipeline.decoder_scheduler import DecoderStoppedError


@asynccontextmanager
async def engine_errors() -> AsyncIterator[None]:
    try:
        yield
    except EngineRequestError as exc:
        raise invalid_request(f"The request was rejected: {exc}") from exc
    except EngineDeadError as exc:
        raise unavailable("The model engine is not available; try again later.") from exc
    except DecoderStoppedError as exc:
        raise unavailable("The speech decoder is not available; try again later.") from exc


@asynccontextmanager
async def audio_errors() -> AsyncIterator[None]:
    """Bad client audio: 400 (413 when too large) naming the problem and the parameter."""
    try:
        yield
    except AudioError as exc:
        raise APIError(exc.message, param=exc.param, code=exc.code, status=exc.status_code) from exc
