"""Pooled HTTP clients for Databricks Model Serving, shared by every chat and embeddings call.

Why this exists: openai-python closes a *streamed* response as soon as it has read ``data: [DONE]``,
before the chunked body's terminating zero-length chunk has been read, so the HTTP/1.1 connection
cannot go back to the pool and every streamed question pays a new TCP + TLS handshake (measured on
the loopback server: three streams, three connections; three plain calls, one). openai drains the
body itself on its async path only. ``_DrainingTransport`` finishes the sync case: when a streamed
body is closed *after* ``[DONE]`` went by, it reads the few bytes left (bounded) so the connection is
reused. A stream abandoned before ``[DONE]`` is closed without draining (its connection dropped).

openai>=3 runs on ``httpx2`` (an API-identical fork of httpx), older openai on ``httpx``; the clients
must come from the library the installed openai uses (``httpx_module``). This is the one adapter
that wraps those libraries' transport classes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from agent.databricks.auth import connect
from agent.databricks.httpx_compat import httpx_module

_DONE = b"data: [DONE]"
_DRAIN_LIMIT = 64 * 1024  # bytes read after [DONE] at most; more means it was not the end
_CLIENTS: dict[Any, Any] = {}
_LOCK = threading.Lock()


def _draining_stream_class(httpx: Any) -> type:
    class DrainOnClose(httpx.SyncByteStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner
            self._tail = b""
            self._done = False
            self._exhausted = False

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                if not self._done:
                    window = self._tail + chunk
                    self._done = _DONE in window
                    self._tail = window[-len(_DONE):]
                yield chunk
            self._exhausted = True

        def close(self) -> None:
            try:
                if self._done and not self._exhausted:
                    read = 0
                    for chunk in self._inner:
                        read += len(chunk)
                        if read > _DRAIN_LIMIT:
                            break
            except Exception:  # noqa: BLE001 - cleanup must not turn a complete answer into an error
                pass
            finally:
                self._inner.close()

    return DrainOnClose


def _transport_class(httpx: Any) -> type:
    drain = _draining_stream_class(httpx)

    class DrainingTransport(httpx.BaseTransport):
        def __init__(self, **kwargs: Any) -> None:
            self._inner = httpx.HTTPTransport(**kwargs)

        def handle_request(self, request: Any) -> Any:
            response = self._inner.handle_request(request)
            if "text/event-stream" in response.headers.get("content-type", ""):
                response.stream = drain(response.stream)
            return response

        def close(self) -> None:
            self._inner.close()

    return DrainingTransport


def clients(base_url: str, *, auth: Any = None, timeout: float = 60.0) -> tuple[Any, Any]:
    """(sync client, async client) for ``base_url``: pooled keep-alive connections, streamed bodies
    drained after ``[DONE]``, ``auth`` (an ``httpx.Auth`` or None) asked on every request. One pair
    per (URL, auth, timeout) per process, so every model built for a question reuses the pool."""
    key = (base_url, id(auth) if auth is not None else None, float(timeout))
    with _LOCK:
        pair = _CLIENTS.get(key)
        if pair is None:
            import openai

            httpx = httpx_module()
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=60)
            transport = _transport_class(httpx)(limits=limits)
            sync_client = openai.DefaultHttpxClient(transport=transport, auth=auth, timeout=timeout)
            async_client = openai.DefaultAsyncHttpxClient(limits=limits, auth=auth, timeout=timeout)
            pair = (sync_client, async_client)
            _CLIENTS[key] = pair
            if auth is not None:
                _KEEP[id(auth)] = auth  # the key holds id(auth): keep the object alive with its clients
        return pair


_KEEP: dict[int, Any] = {}


def reset_clients() -> None:
    """Close and forget the pooled clients (tests; a process that changed its configuration)."""
    with _LOCK:
        for sync_client, _ in _CLIENTS.values():
            sync_client.close()
        _CLIENTS.clear()
        _KEEP.clear()


def async_client(settings: Any) -> Any:
    """A new async client with the workspace's per-request auth, for a caller that owns an event
    loop (``kb serve``: connections belong to the loop that opened them)."""
    import openai

    auth = connect(settings).auth if settings.llm_configured else None
    return openai.DefaultAsyncHttpxClient(auth=auth, timeout=settings.timeout)
