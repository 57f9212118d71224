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
    return APIError(f"The model '{model}' does not exist.", param="model", code="model_not_found", status=404)


def payload_too_large(message: str, param: str | None = None) -> APIError:
    return APIError(message, param=param, code="request_too_large", status=413)


def overloaded(message: str, retry_after: int = 1) -> APIError:
    return APIError(message, code="rate_limit_exceeded", status=429, type="rate_limit_error",
                    headers={"Retry-After": str(retry_after)})  # fmt: skip


def unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(message, code="service_unavailable", status=503, type="server_error",
                    headers={"Retry-After": str(retry_after)})  # fmt: skip


def server_error(message: str = "The server had an error while processing your request.") -> APIError:
    return APIError(message, code="internal_error", status=500, type="server_error")
