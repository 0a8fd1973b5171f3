"""The project's own exceptions (shared by ``ingest`` and ``agent``; ``agent.errors`` re-exports them).

Every failure a user can cause or a remote service can produce becomes one of these, with a
message that fits on one line and says what to do. The CLI prints ``error: <message>`` and exits
with ``exit_code``; the API maps them to HTTP statuses. Messages never contain the token.
"""

from __future__ import annotations


class KbError(Exception):
    """Base class: a failure with a clear one-line message for the user."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")

    def __str__(self) -> str:  # one line, always
        return " ".join(join_hint(self.message, self.hint).split())


def join_hint(message: str, hint: str | None) -> str:
    """``message; hint``, whatever the message ends with: "... (401: Invalid access token.); check the
    credentials", "the index is missing; run 'kb ingest'" (a final ``.``, ``;`` or ``,`` of the
    message is dropped first; a ``)`` or ``?`` stays)."""
    message = (message or "").rstrip()
    if not hint or not hint.strip():
        return message
    if message.endswith((".", ";", ",")) and not message.endswith("..."):
        message = message[:-1].rstrip()
    return f"{message}; {hint.strip()}" if message else hint.strip()


class UsageError(KbError):
    """The user asked for something that cannot be done (bad argument, missing path)."""

    exit_code = 2
    http_status = 400


class IndexUnavailableError(KbError):
    """The index cannot be searched: missing, busy, unusable, or built with another embedding model."""

    exit_code = 3
    http_status = 503


class IndexMissingError(IndexUnavailableError):
    pass


class IndexBusyError(IndexUnavailableError):
    pass


class IndexUnusableError(IndexUnavailableError):
    """The index files are damaged or unreadable: rebuild it."""


class EmbeddingMismatchError(IndexUnavailableError):
    pass


class IngestError(KbError):
    """Nothing could be indexed."""

    exit_code = 3
    http_status = 500


class RemoteError(KbError):
    """Databricks Model Serving failed: the base of every remote failure."""

    exit_code = 4
    http_status = 502


class AuthError(RemoteError):
    http_status = 502


class EndpointNotFoundError(RemoteError):
    http_status = 502


class RateLimitedError(RemoteError):
    http_status = 503


class RemoteServerError(RemoteError):
    http_status = 502


class RemoteTimeoutError(RemoteError):
    http_status = 504


class RemoteConnectionError(RemoteError):
    http_status = 502


class BadRequestError(RemoteError):
    http_status = 502


class StreamInterruptedError(RemoteError):
    """The answer stream was cut; ``partial`` holds what arrived before the cut."""

    http_status = 502

    def __init__(self, message: str, *, partial: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.partial = partial


def describe_remote_failure(exc: BaseException, *, what: str, endpoint: str, base_url: str | None) -> KbError:
    """Turn an ``openai``/``httpx`` exception from Databricks Model Serving into a KbError.

    ``what`` names the call ("chat", "embeddings"); ``endpoint`` is the serving endpoint name.
    Databricks error bodies look like ``{"error_code": "...", "message": "..."}``.
    """
    import openai  # local: only needed once something failed

    where = f"serving endpoint '{endpoint}'"
    if isinstance(exc, KbError):
        return exc
    if isinstance(exc.__cause__, KbError):  # e.g. an OAuth refresh that failed inside the HTTP client's auth
        return exc.__cause__
    if isinstance(exc, openai.APITimeoutError):
        return RemoteTimeoutError(
            f"Databricks {what} request to {where} timed out", hint="raise KB_TIMEOUT or try again"
        )
    if isinstance(exc, openai.APIConnectionError):
        return RemoteConnectionError(
            f"cannot reach Databricks at {base_url}", hint="check base_url / DATABRICKS_HOST and your network"
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code, detail = _databricks_error(exc)
        tail = f": {code + ': ' if code else ''}{detail}" if (code or detail) else ""
        if status in (401, 403):
            return AuthError(
                f"Databricks rejected the token ({status}{tail})",
                hint="check the credentials (a valid DATABRICKS_TOKEN, or the profile or OAuth client; `kb doctor` shows which resolved)",
            )
        if status == 404:
            return EndpointNotFoundError(
                f"{where} was not found at {base_url} (404{tail})",
                hint="check KB_CHAT_ENDPOINT / KB_EMBEDDING_ENDPOINT and the workspace URL",
            )
        if status == 429:
            return RateLimitedError(
                f"Databricks rate limit hit on {where} after retries (429{tail})", hint="wait and try again"
            )
        if status >= 500:
            return RemoteServerError(f"Databricks server error from {where} ({status}{tail})", hint="try again later")
        return BadRequestError(f"Databricks refused the {what} request to {where} ({status}{tail})")
    return RemoteConnectionError(
        f"the connection to Databricks dropped during the {what} request to {where} ({type(exc).__name__})"
    )


def is_remote_failure(exc: BaseException) -> bool:
    """True for errors of the HTTP client stack (openai, httpx), which describe_remote_failure explains."""
    import httpx
    import openai

    return isinstance(exc, (openai.OpenAIError, httpx.HTTPError))


def _databricks_error(exc) -> tuple[str, str]:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        code = str(inner.get("error_code") or inner.get("code") or "")
        message = str(inner.get("message") or "")
        return code, " ".join(message.split())[:300]
    return "", ""


def chat_failure(exc: BaseException, *, partial: str, endpoint: str, base_url: str | None) -> BaseException:
    """What to raise for ``exc`` caught while streaming a chat answer.

    Remote failures become the project's errors (a ``StreamInterruptedError`` keeping ``partial``
    when text had already arrived); anything else (our own errors, bugs) is returned unchanged,
    for the caller to re-raise as it is.
    """
    if isinstance(exc, KbError) or not is_remote_failure(exc):
        return exc
    error = describe_remote_failure(exc, what="chat", endpoint=endpoint, base_url=base_url)
    if partial:
        return StreamInterruptedError(f"the answer stream was cut off ({error})", partial=partial)
    return error
