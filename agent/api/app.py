"""``create_app(settings)``: the FastAPI application behind ``kb serve``.

    from agent.api import create_app
    app = create_app(load_settings())          # uvicorn.run(app) / TestClient(app)

Routes: ``POST /v1/chat/completions`` and ``POST /v1/responses`` (kb-rag, kb-agent; streaming or not), ``GET /v1/models``,
``POST /api/search``, ``POST /api/ask``, ``GET /api/documents[/{source}]``, ``GET /healthz``,
``GET /readyz``, and the chat page at ``/`` (``agent/static``). ``llm`` and ``retriever`` replace
the configured ones (tests, notebooks).

``HostCheck`` guards against DNS rebinding: a web page on another site whose name the attacker
re-points at 127.0.0.1 would otherwise reach an open (keyless) server from the user's browser. The
browser still sends the attacker's name in ``Host``, so without keys only loopback names (and IP
literals, which no rebinding can produce) are answered; ``KB_API_ALLOWED_HOSTS`` adds names, and
with keys it is the complete list when set. Hand-written (a few lines) because Starlette's
``TrustedHostMiddleware`` splits the port off at the first colon, which breaks ``[::1]:8000``.
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from agent import __version__
from agent.api import chat, responses, routes
from agent.api.auth import ANONYMOUS, Callers
from agent.api.backend import ModelCache
from agent.api.errors import ApiError, conceal, install_error_handlers
from agent.api.limits import BodySizeLimit, ConcurrencyGate, send_error
from agent.settings import Settings, load_settings

STATIC = Path(__file__).resolve().parent.parent / "static"
log = logging.getLogger("kb.api")

# The page loads only its own files and talks only to this origin.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(
    settings: Settings | None = None, *, llm: Any = None, retriever: Any = None, warm: bool = True
) -> FastAPI:
    """The API. ``warm``: open the index and load the embedding model at start-up."""
    settings = settings or load_settings()
    conceal(settings)  # error messages name KB_INDEX_DIR, not the server's path (and no URLs)
    backend = ModelCache(settings, llm=llm, retriever=retriever)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if warm:
            await run_in_threadpool(backend.warm)
            backend.warm_models(list(settings.api_keys) or [ANONYMOUS])
        yield
        await backend.aclose()

    app = FastAPI(
        title="kb", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.backend = backend
    app.state.callers = Callers(settings.api_keys)
    app.state.gate = ConcurrencyGate(settings.api_max_concurrency)
    install_error_handlers(app)

    app.add_api_route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    app.add_api_route("/v1/responses", responses.create_response, methods=["POST"])
    app.include_router(routes.public)
    app.include_router(routes.private)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(SecurityHeaders)
    # Outermost: refuse oversized bodies before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    # ... and before that, requests for a host name this server does not answer for.
    app.add_middleware(HostCheck, allowed=settings.api_allowed_hosts, open_mode=not settings.api_keys)
    return app


LOOPBACK_NAMES = frozenset({"localhost"})


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower case, without
    port or trailing dot; ``None`` when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    name = name.rstrip(".")
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Pure ASGI: 421 for a ``Host`` this server does not answer for (see the module docstring).

    ``/healthz`` is always answered (it says only "ok"), so load balancers probing by address work.
    """

    def __init__(self, app: Any, allowed: list[str] | tuple[str, ...], open_mode: bool) -> None:
        self.app = app
        self.allowed = {entry.strip().lower().rstrip(".") for entry in allowed if entry.strip()}
        self.any_host = "*" in self.allowed or (not open_mode and not self.allowed)
        self.open_mode = open_mode

    def accepts(self, header: str | None) -> bool:
        if self.any_host or header is None:  # no Host at all: not a browser, so not a rebinding
            return True
        name = host_name(header)
        if name is None:
            return False
        if name in self.allowed or header.strip().lower() in self.allowed:
            return True
        return self.open_mode and (name in LOOPBACK_NAMES or _is_ip(name))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/healthz":
            header = next((v for k, v in scope.get("headers") or () if k == b"host"), None)
            if not self.accepts(None if header is None else header.decode("latin-1")):
                hint = ("add it to KB_API_ALLOWED_HOSTS" if not self.open_mode else
                        "without KB_API_KEYS only localhost and IP addresses are answered; "
                        "add the name to KB_API_ALLOWED_HOSTS")
                await send_error(send, ApiError(421, f"this server does not answer for that Host header: {hint}",
                                                code="host_not_allowed", type="invalid_request_error"))
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Pure ASGI (no per-chunk cost on streams): nosniff, no referrer, no framing; the page's CSP."""

    COMMON = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"))

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.COMMON if k not in present]
                if page and b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
