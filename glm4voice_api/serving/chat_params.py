"""The chat parameters GLM-4-Voice cannot honour, each refused with a 400 that names it (never silently ignored),
and the ones that need a check beyond their type (`n`, `stop`, `logprobs`)."""

from __future__ import annotations

from dataclasses import dataclass

from glm4voice_api.errors import APIError, invalid_request
from glm4voice_api.protocol import chat as wire

MAX_CHOICES = 8
"""`n` above this is refused: each choice is a whole reply (and, spoken, a decoder stream) under one admission slot."""


REFUSED_EXTRAS = {
    "reasoning_effort": "GLM-4-Voice is not a reasoning model.",
    "verbosity": "the reply's length follows the conversation and max_completion_tokens only.",
    "web_search_options": "this server has no web search.",
    "store": "completions are not stored for later retrieval (audio replies are, by their audio id).",
}
"""OpenAI parameters outside the request schema that would change what the client gets; the others it may send
(`metadata`, `service_tier`, `prediction`, `prompt_cache_key`, `safety_identifier`, ...) change nothing here."""


def _unsupported(message: str, param: str, code: str = "unsupported_parameter") -> APIError:
    return APIError(message, param=param, code=code)


@dataclass(frozen=True)
class CheckedParams:
    n: int
    stop: tuple[str, ...]
    top_logprobs: int | None


def check_parameters(req: wire.ChatCompletionRequest, *, audio_out: bool) -> CheckedParams:
    if req.stream_options is not None and not req.stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if req.tools or req.functions:
        param = "tools" if req.tools else "functions"
        raise _unsupported(
            f"'{param}' is not supported: GLM-4-Voice was not trained to call tools or functions.", param
        )
    for param, choice in (("tool_choice", req.tool_choice), ("function_call", req.function_call)):
        if choice not in (None, "none"):
            raise _unsupported(f"'{param}' is not supported: GLM-4-Voice was not trained to call tools.", param)
    extra = req.model_extra or {}
    for param, why in REFUSED_EXTRAS.items():
        if extra.get(param) not in (None, False):
            raise _unsupported(f"'{param}' is not supported: {why}", param)
    if req.logit_bias:
        raise _unsupported(
            "'logit_bias' is not supported: the reply's token ids alternate between text and speech slots that the "
            "server constrains itself.",
            "logit_bias",
        )
    if req.response_format is not None and req.response_format.type != "text":
        raise _unsupported(
            f"response_format '{req.response_format.type}' is not supported: vLLM's structured outputs need a "
            "text tokenizer in the engine, and this server runs the engine on token ids only (GLM-4-Voice's replies "
            "interleave text and speech tokens under the server's own constraint).",
            "response_format",
            code="unsupported_value",
        )
    n = req.n or 1
    if n > MAX_CHOICES:
        raise invalid_request(f"n is {n}; this server allows at most {MAX_CHOICES} choices per request.", "n")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    stop = tuple(s for s in stop if s)
    if stop and audio_out:
        raise _unsupported(
            "'stop' is supported with modalities [\"text\"] only: a spoken reply's audio lags its text, so it cannot "
            "be cut where a stop string appears.",
            "stop",
            code="unsupported_value",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    top = (req.top_logprobs or 0) if req.logprobs else None
    return CheckedParams(n=n, stop=stop, top_logprobs=top)
