"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Everything the router refuses is an :class:`ApiError`; the HTTP layer turns it into a response
without looking inside, so the status, the field it is about and the message are decided here
and in the pure validators, never in handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ApiError(Exception):
    """A refusal the client sees: HTTP ``status`` plus OpenAI's error fields."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None  # sent as Retry-After on 429/503

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Extra response headers (Retry-After for overload refusals)."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(round(self.retry_after_s))))}


def bad_param(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    """400 about one request field."""
    return ApiError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "") -> ApiError:
    """400 for a parameter OpenAI has but baton does not implement."""
    extra = f": {why}" if why else ""
    return ApiError(
        400, f"'{param}' is not supported by baton{extra}", param=param, code="unsupported_parameter"
    )


def model_not_found(model: str, served: list[str]) -> ApiError:
    """404 for a model name that is not served here."""
    return ApiError(
        404,
        f"The model '{model}' does not exist; this server serves {served}",
        param="model",
        code="model_not_found",
    )


def overloaded(message: str, retry_after_s: float = 1.0) -> ApiError:
    """429: the router holds too many requests; retry later."""
    return ApiError(
        429, message, type="rate_limit_error", code="rate_limit_exceeded", retry_after_s=retry_after_s
    )


def unavailable(message: str, retry_after_s: float = 2.0) -> ApiError:
    """503: no worker of a needed role is available right now."""
    return ApiError(503, message, type="service_unavailable", code="no_workers", retry_after_s=retry_after_s)


def internal(message: str) -> ApiError:
    """500: every retry failed; the message says what was tried."""
    return ApiError(500, message, type="server_error", code="internal_error")
