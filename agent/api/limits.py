"""Limits that keep one caller from exhausting the server: body size and concurrent work.

- ``BodySizeLimit`` (ASGI middleware) answers 413 when ``Content-Length`` is over the limit, and
  when a body sent without a length (chunked) grows past it; such a body is read here, never more
  than the limit, before the app sees it. (With a length, the HTTP server delivers no more.)
- ``ConcurrencyGate`` caps the requests doing work (retrieval, LLM calls) at once: when it is full
  the request is answered 429 with ``Retry-After`` at once instead of queueing without bound. A slot
  is held until a streamed answer has finished.

Question length, message count and the ``max_tokens`` ceiling are checked where the request is read
(``agent.api.chat``, ``agent.api.routes``) with the numbers from ``Settings``.
"""

from __future__ import annotations

import json
from typing import Any

from agent.api.errors import ApiError

Scope = dict[str, Any]


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await send_error(send, ApiError(400, "invalid Content-Length header", code="invalid_request"))
                return
            if too_big:
                await send_error(send, self._error())
                return
        else:  # no length given (chunked): read it here, up to the limit, then hand it on
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    await send_error(send, self._error())
                    return
                if not message.get("more_body"):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)

    def _error(self) -> ApiError:
        return ApiError(
            413, f"request body too large: the limit is {self.max_bytes} bytes (KB_API_MAX_BODY_BYTES)",
            code="request_too_large",
        )


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def send_error(send: Any, error: ApiError) -> None:
    """Answer with ``error`` from ASGI middleware (before the app and its handlers)."""
    body = json.dumps(error.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Slot:
    """One unit of the gate; ``release`` is idempotent."""

    def __init__(self, gate: ConcurrencyGate) -> None:
        self._gate = gate
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate.active -= 1


class ConcurrencyGate:
    """At most ``limit`` requests at work; used from the event loop only (no lock needed)."""

    def __init__(self, limit: int, retry_after: int = 1) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0
        self.rejected = 0

    def acquire(self) -> Slot:
        if self.active >= self.limit:
            self.rejected += 1
            raise ApiError(
                429,
                f"the server is busy: {self.limit} requests are already being answered "
                "(KB_API_MAX_CONCURRENCY); retry shortly",
                code="server_busy",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.active += 1
        return Slot(self)
