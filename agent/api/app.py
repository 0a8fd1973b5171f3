"""``create_app(settings)``: the FastAPI application behind ``kb serve``.

    from agent.api import create_app
    app = create_app(load_settings())          # uvicorn.run(app) / TestClient(app)

Routes: ``POST /v1/chat/completions`` (kb-rag, kb-agent; streaming or not), ``GET /v1/models``,
``POST /api/search``, ``POST /api/ask``, ``GET /api/documents[/{source}]``, ``GET /healthz``,
``GET /readyz``, and the chat page at ``/`` (``agent/static``). ``llm`` and ``retriever`` replace
the configured ones (tests, notebooks).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from agent import __version__
from agent.api import chat, routes
from agent.api.auth import ANONYMOUS, Callers
from agent.api.backend import Backend
from agent.api.errors import install_error_handlers
from agent.api.limits import BodySizeLimit, ConcurrencyGate
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
    backend = Backend(settings, llm=llm, retriever=retriever)

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
    app.include_router(routes.public)
    app.include_router(routes.private)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(SecurityHeaders)
    # Outermost: refuse oversized bodies before anything reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    return app


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
