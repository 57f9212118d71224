"""Wire types shared by every endpoint family (OpenAI shapes)."""

from __future__ import annotations

import logging
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_LIST_ITEMS = 2048
BoundedList = Annotated[list[T], Field(max_length=MAX_LIST_ITEMS, fail_fast=True)]
"""Every list in a request body. Without it a body of `[1, 1, 1, ...]` makes one validation error per item, each
built in Python on the event loop: 1M items (2 MB) blocked the server for 10 s and took 1 GB, a body at the 32 MiB
cap would exhaust memory. One error per list tells the client enough."""


class OpenAIBaseModel(BaseModel):
    """Accepts (and logs) fields we do not know, as OpenAI-compatible servers do: SDKs send new fields first."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="wrap")
    @classmethod
    def _log_extra_fields(cls, data, handler):
        result = handler(data)
        if result.model_extra:
            logger.debug("%s: ignoring fields %s", cls.__name__, sorted(result.model_extra))
        return result


EVENT_STREAM = {
    "text/event-stream": {
        "schema": {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
    }
}
"""The `content` entry of a route's OpenAPI 200 response for its SSE form, one event (`data: <json>`) at a time."""


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope: every error this server sends, request validation included."""

    error: ErrorObject


class PromptTokensDetails(BaseModel):
    audio_tokens: int = 0
    text_tokens: int = 0
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    audio_tokens: int = 0
    text_tokens: int = 0
    reasoning_tokens: int = 0


class Usage(BaseModel):
    """Chat usage with audio/text token details (12.5 audio tokens per second of speech)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
