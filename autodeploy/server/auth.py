"""The guard in front of every route: API key and body size, checked before a handler runs.

    Authorization: Bearer <key>   required on every path but /health when the server has a key
                                  (401 otherwise; compared in constant time)
    body size                     Content-Length over the limit: 413 at once; a chunked body that
                                  grows past it fails its read with 413
"""

from __future__ import annotations

import hmac
from typing import Any

from autodeploy.server.errors import APIError, error_response

OPEN_PATHS = ("/health",)


def bearer_ok(headers: list[tuple[bytes, bytes]], api_key: str) -> bool:
    for k, v in headers:
        if k.lower() == b"authorization":
            scheme, _, token = v.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
    return False


class GuardMiddleware:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers", [])
        if self.api_key and scope["path"] not in OPEN_PATHS and not bearer_ok(headers, self.api_key):
            resp = error_response(401, "Incorrect API key provided: send it as 'Authorization: Bearer <key>'.",
                                  None, "invalid_api_key")
            return await resp(scope, receive, send)
        length = next((v for k, v in headers if k.lower() == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        seen = 0
        limit = self.max_body_bytes

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise APIError(413, f"Request body is larger than the limit of {limit} bytes.", None,
                                   "request_too_large")
            return msg

        await self.app(scope, limited_receive, send)

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        resp = error_response(413, f"Request body is larger than the limit of {self.max_body_bytes} bytes.",
                              None, "request_too_large")
        await resp(scope, receive, send)
