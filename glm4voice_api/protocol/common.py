"""Wire types shared by every endpoint family (OpenAI shapes)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, model_validator

logger = logging.getLogger(__name__)


class OpenAIBaseModel(BaseModel):
    """Accepts (and logs) fields we do not know, as OpenAI-compatible servers do: SDKs send new fields first."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="wrap")
    @classmethod
    def _log_extra_fields(cls, data, handler):  # noqa: ANN001, ANN206 - pydantic validator signature
        result = handler(data)
        if result.model_extra:
            logger.debug("%s: ignoring fields %s", cls.__name__, sorted(result.model_extra))
        return result


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
