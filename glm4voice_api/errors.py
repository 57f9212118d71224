"""One error hierarchy; one renderer of the OpenAI envelope `{"error": {message, type, param, code}}`.

Client faults are 4xx (the openai SDK retries 408/409/429/5xx, so a client fault answered 5xx would be retried in
vain); overload is 429/503 with Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class APIError(Exception):
    """An error the API reports to the client."""

    message: str
    param: str | None = None
    code: str | None = None
    status: int = 400
    type: str = "invalid_request_error"
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = "not_found") -> APIError:
    return APIError(message, param=param, code=code, status=404, type="invalid_request_error")


def model_not_found(model: str) -> APIError:
    # Echo at most 200 characters: a 30 MB model name must not come back as a 30 MB error.
    shown = model if len(model) <= 200 else model[:200] + "..."
    return APIError(f"The model '{shown}' does not exist.", param="model", code="model_not_found", status=404)


def payload_too_large(message: str, param: str | None = None) -> APIError:
    return APIError(message, param=param, code="request_too_large", status=413)


def too_many_requests(message: str, code: str, retry_after: int) -> APIError:
    """429 with `Retry-After` (whole seconds, at least 1): a tenant's limit or a full server."""
    return APIError(
        message, code=code, status=429, type="rate_limit_error", headers={"Retry-After": str(max(1, int(retry_after)))}
    )


def shutting_down(retry_after: int = 5) -> APIError:
    return APIError(
        "The server is shutting down; retry the request (another replica will take it).",
        code="server_shutting_down",
        status=503,
        type="server_error",
        headers={"Retry-After": str(retry_after)},
    )


def timed_out(message: str, code: str, retry_after: int = 5) -> APIError:
    """A time limit ran out: 503 + Retry-After rather than 504. Both are retried by the openai SDK (it retries every
    5xx), but 504 tells proxies and clients a gateway timed out, while 503 with Retry-After says this server could
    not serve it in time now (overload is the usual cause) and when to try again; load balancers read it that way."""
    return APIError(message, code=code, status=503, type="server_error", headers={"Retry-After": str(retry_after)})


def unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(
        message, code="service_unavailable", status=503, type="server_error", headers={"Retry-After": str(retry_after)}
    )


def store_unavailable(retry_after: int = 5) -> APIError:
    """The shared store (keys, audio ids, voices) cannot be reached now: retryable, and not the client's fault."""
    return APIError(
        "The server's data store is temporarily unavailable; retry the request shortly.",
        code="store_unavailable",
        status=503,
        type="server_error",
        headers={"Retry-After": str(retry_after)},
    )


def server_error(message: str = "The server had an error while processing your request.") -> APIError:
    return APIError(message, code="internal_error", status=500, type="server_error")


def context_length_exceeded(max_len: int, n_prompt: int, requested: int | None, param: str) -> APIError:
    """OpenAI's wording for a prompt (plus the requested completion) longer than the model's context."""
    if requested is None:
        message = (
            f"This model's maximum context length is {max_len} tokens. However, your messages resulted in "
            f"{n_prompt} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{n_prompt + requested} tokens ({n_prompt} in the messages, {requested} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return APIError(message, param=param, code="context_length_exceeded")
