"""Wire types shared by every endpoint family (OpenAI shapes)."""

from __future__ import annotations

import logging
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_LIST_ITEMS = 2048
BoundedList = Annotated[list[T], Field(max_length=MAX_LIST_ITEMS, fail_fast=True)]
"""Every list in a request body. Without it a body of `[1, 1, 1, ...]` makes one validation error per item, each
built in Python on the event loop: 1M items (2 MB) blocked the server for 10 s and took 1 GB, a body at the 32 MiB
cap would exhaust memory. One error per list tells the client enough."""


def _has_lone_surrogate(value: object) -> bool:
    """Whether a validated value (str, or lists and dicts of them; nested models check their own fields) holds one."""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode()  # in C: a lone surrogate is the only str that UTF-8 cannot encode
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list | tuple):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


class OpenAIBaseModel(BaseModel):
    """Accepts (and logs) fields we do not know, as OpenAI-compatible servers do: SDKs send new fields first."""

    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="after")
    @classmethod
    def _no_lone_surrogates(cls, value):
        # JSON may escape a lone surrogate ("\ud800"); no UTF-8 can hold it, so the store, the logs and the
        # error that echoes it would all fail (a 500, the connection dropped). A 400 naming the field instead.
        if _has_lone_surrogate(value):
            raise ValueError("the text holds a lone UTF-16 surrogate (not valid Unicode text)")
        return value

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
