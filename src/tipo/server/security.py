"""Pure ASGI middleware: the API key check and the security headers of every response."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

from .errors import UnauthorizedError, error_body

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

# The page is plain files from this server: no inline script or style, no other host.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# FastAPI's /docs page loads Swagger UI from a CDN with an inline script: it keeps its own
# (lack of) policy; /openapi.json is the same document, served locally.
_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_HEADERS)
        if scope["path"] not in _DOCS_PATHS:
            extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ApiKeyCheck:
    """Every path under ``protected`` needs ``Authorization: Bearer <key>``. Keys are compared
    as SHA-256 digests with ``secrets.compare_digest``: constant time, whatever their length.
    CORS preflights (OPTIONS) pass: they carry no credentials by design."""

    def __init__(
        self,
        app: ASGIApp,
        key: str,
        protected: tuple[str, ...] = ("/v1/", "/metrics"),
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()
        self.protected = protected
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self._guards(scope):
            await self.app(scope, receive, send)
            return
        if secrets.compare_digest(hashlib.sha256(_bearer(scope)).digest(), self.digest):
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject()
        await _send_unauthorized(send)

    def _guards(self, scope: Scope) -> bool:
        path: str = scope["path"]
        return any(path.startswith(p) or path == p.rstrip("/") for p in self.protected)


def _bearer(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


async def _send_unauthorized(send: Any) -> None:
    error = UnauthorizedError(
        "missing or wrong API key",
        hint="send the header 'Authorization: Bearer <key>' with the server's key",
    )
    body = json.dumps(error_body(error)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["CONTENT_SECURITY_POLICY", "ApiKeyCheck", "SecurityHeaders"]
