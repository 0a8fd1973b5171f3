"""OpenAI-shaped errors: ``{"error": {"message", "type", "code", "param"}}`` with the right status.

Every failure leaves the API in this shape: our own ``ApiError`` (auth, limits, bad requests), the
project's ``KbError`` family (a Databricks failure upstream becomes 502/503/504 with its one-line
message), FastAPI's validation errors (400, naming the field) and anything unexpected (500 with a
generic message; the traceback goes to the server log only).

Every message passes ``agent.errors.public_message`` (registered secrets, token shapes and Bearer
credentials masked, even when an upstream error body echoed them), and the server's own places,
the index folder and the Databricks / Chroma URLs (``conceal(settings)``), are replaced by the
setting's name in what callers see; the server log keeps the full message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.errors import ConfigError, KbError, RateLimitedError, RemoteError, public_message

log = logging.getLogger("kb.api")

# Server-side values callers are not told (longest first), and what they see instead.
_CONCEALED: dict[str, str] = {}


def conceal(settings: Any) -> None:
    """Hide ``settings``' index folder and service URLs from API error messages from now on."""
    from pathlib import Path

    found: dict[str, str] = {}
    index = Path(settings.index_dir)
    for path in {str(index), str(index.absolute()), str(index.resolve())}:
        if "/" in path or "\\" in path:  # a bare relative name (".kb") says nothing
            found[path] = "KB_INDEX_DIR"
    for attribute, name in (("serving_base_url", "the configured Databricks URL"),
                            ("databricks_host", "the configured Databricks URL"),
                            ("chroma_url", "KB_CHROMA_URL")):
        value = getattr(settings, attribute, None)
        if value and len(str(value)) >= 8:
            found[str(value).rstrip("/")] = name
    merged = {**_CONCEALED, **found}
    _CONCEALED.clear()
    _CONCEALED.update(sorted(merged.items(), key=lambda item: len(item[0]), reverse=True))


def for_callers(message: str) -> str:
    """``message`` with secrets masked and the concealed server paths and URLs replaced."""
    message = public_message(message)
    for value, name in list(_CONCEALED.items()):
        if value in message:
            message = message.replace(value, name)
    return message

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """A failure to report to the caller as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = for_callers(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("_")).lower()


def from_kb_error(exc: KbError) -> ApiError:
    """The project's error as an API error: its status, its one-line message, a stable code."""
    status = exc.http_status
    if isinstance(exc, ConfigError):
        status = 503  # the server is not set up to do this: unavailable, not the caller's fault
    if isinstance(exc, RemoteError):
        code = "upstream_" + _snake(type(exc).__name__).removesuffix("_error")
        kind = "upstream_error"
    else:
        code = _snake(type(exc).__name__).removesuffix("_error")
        kind = None
    headers = {"Retry-After": "5"} if isinstance(exc, RateLimitedError) else None
    return ApiError(status, str(exc), code=code, type=kind, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(KbError)
    async def _kb_error(request: Request, exc: KbError) -> JSONResponse:
        error = from_kb_error(exc)
        # The log keeps the details the caller does not get (the log filter masks secrets).
        log.warning("%s %s -> %d %s", request.method, request.url.path, error.status, exc)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server (uvicorn) logs the traceback; the caller gets no detail.
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return ApiError(500, "internal error; the server log has the details", code="internal_error").response()


def validation_error(errors: Any) -> ApiError:
    """FastAPI/pydantic validation errors as one 400 naming the first offending field."""
    first = next(iter(errors), {}) if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif not loc and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        message = "the request body must be a JSON object (send Content-Type: application/json)"
    elif first.get("type") == "missing" and param:
        message = f"'{param}' is required"
    elif param:
        message = f"invalid '{param}': {message}"
    return ApiError(400, message, code="invalid_request", param=param)
