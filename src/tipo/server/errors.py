"""HTTP errors: each error class has one status and one machine-readable kind.

The body of every error is ``{"error": {"kind", "message", "hint"}}``; a stream reports the same
object in its ``error`` event. Errors are mapped by class, never by message text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import BackendError, InvalidRequestError, TipoError
from .engine_loop import QueueFullError, RequestTimeoutError


class ApiError(TipoError):
    """An error of the HTTP layer itself (the request never reached the engine)."""

    status = 400
    kind = "bad_request"


class InvalidJSONError(ApiError):
    kind = "invalid_json"


class UnsupportedMediaTypeError(ApiError):
    status, kind = 415, "unsupported_media_type"


class PayloadTooLargeError(ApiError):
    status, kind = 413, "payload_too_large"


class BodyTimeoutError(ApiError):
    status, kind = 408, "body_timeout"


class UnauthorizedError(ApiError):
    status, kind = 401, "unauthorized"


class NotFoundError(ApiError):
    status, kind = 404, "not_found"


class MethodNotAllowedError(ApiError):
    status, kind = 405, "method_not_allowed"


# (class, HTTP status, kind), most specific first.
STATUS: tuple[tuple[type[TipoError], int, str], ...] = (
    (QueueFullError, 429, "queue_full"),
    (RequestTimeoutError, 504, "timeout"),
    (InvalidRequestError, 422, "invalid_request"),
    (BackendError, 500, "backend"),
    (TipoError, 500, "internal"),
)


def status_and_kind(error: TipoError) -> tuple[int, str]:
    if isinstance(error, ApiError):
        return error.status, error.kind
    return next((status, kind) for cls, status, kind in STATUS if isinstance(error, cls))


def validation_message(problems: Iterable[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line: "field: what is wrong; ..." (the first five)."""
    parts = []
    for item in list(problems)[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def error_body(error: TipoError) -> dict[str, Any]:
    _, kind = status_and_kind(error)
    return {"error": {"kind": kind, "message": error.message, "hint": error.hint}}


__all__ = [
    "ApiError",
    "BodyTimeoutError",
    "InvalidJSONError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "error_body",
    "status_and_kind",
    "validation_message",
]
