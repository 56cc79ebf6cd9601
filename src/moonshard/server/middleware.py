"""ASGI middleware of the HTTP API: the body size limit and per-request metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moonshard.server.errors import error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from moonshard.server.metrics import Metrics

__all__ = ["BodyLimit", "RequestMetrics"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    """Answers 413 to a request body over ``max_bytes``, announced or streamed.

    The body is read before the app runs (bounded by ``max_bytes``), so a chunked body that
    grows past the limit is refused before any of it is parsed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self._app(scope, receive, send)
            return
        announced = self._announced_length(scope)
        if announced == -1:
            await error_response(400, "bad_request", "Content-Length is not a number")(
                scope, receive, send)
            return
        if announced is not None and announced > self._max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._app(scope, _replay(b"".join(chunks), receive), send)

    @staticmethod
    def _announced_length(scope: Scope) -> int | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                return int(text) if text.isdigit() and len(text) < 20 else -1
        return None

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"the request body is over {self._max_bytes} bytes")
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestMetrics:
    """Counts each request by method, route template (not the raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The template keeps the label set small: tenants and keys never become labels.
            template = getattr(route, "path", None) or "unmatched"
            self._metrics.http_request(scope["method"], str(template), status)
