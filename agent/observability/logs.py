"""Logging for ``kb``: one stderr handler, human-readable or JSON lines, with secrets masked.

``configure_logging(verbose=, json_format=)`` is called by the ``kb`` app callback (``--verbose``,
``--log-json``). Without ``--verbose`` only warnings and errors are logged; with it, one INFO line
per model call (endpoint, command, tokens, latency, status) and the HTTP requests made.

Every record passes ``RedactSecrets`` before it is written: the configured Databricks token (and
any other value given to ``register_secret``), anything shaped like a Databricks token
(``dapi...``) or a JWT, ``Bearer ...`` credentials and ``token=``-style URL parameters become
``[REDACTED]`` in the message, its arguments, structured fields and tracebacks. ``redact`` is
also what every error message passes before the CLI prints it or the API returns it
(``agent.errors.public_message``).

Stdlib only: imported by the CLI callback, which must stay fast.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any

MASK = "[REDACTED]"
# Token shapes masked even when nobody registered the value. Every pattern is linear: the classes
# that repeat are disjoint from what follows them, and the JWT one may only start at the beginning
# of a run of token characters, so no input makes the engine backtrack over it twice.
_DAPI = re.compile(r"dapi[0-9A-Za-z_\-]{4,}")  # Databricks personal access tokens
_BEARER = re.compile(r"(?i)(bearer\s+)(?!\[REDACTED\])[^\s'\",;&()<>\[\]{}]+")  # Authorization header values
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")  # OAuth access tokens (JWTs)
_PARAM = re.compile(
    r"(?i)((?:access_token|refresh_token|client_secret|token|api_key|apikey)=)(?!\[REDACTED\])[^&\s'\",;()<>\[\]{}]+"
)

# Registered secrets: the first _PINNED ones (settings' token, client secrets, API keys, registered
# when settings load) are kept for the life of the process; after that the _RECENT most recent
# (OAuth access tokens fetched at run time, one an hour), so a server running for months does not
# scan an ever-growing list. Readers take the tuple without the lock (one atomic reference read).
_PINNED = 64
_RECENT = 512
_pinned: dict[str, None] = {}
_recent: dict[str, None] = {}
_SNAPSHOT: tuple[str, ...] = ()
_LOCK = threading.Lock()

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a structured field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log record and every error message from now on (the token is
    registered when settings load; OAuth access tokens when they are fetched). Cheap and
    thread-safe: a value already known costs one dict lookup."""
    if not value or len(value) < 4:
        return
    value = str(value)
    if value in _pinned or value in _recent:
        return
    global _SNAPSHOT
    with _LOCK:
        if value in _pinned or value in _recent:
            return
        if len(_pinned) < _PINNED:
            _pinned[value] = None
        else:
            _recent[value] = None
            while len(_recent) > _RECENT:
                del _recent[next(iter(_recent))]
        # Longest first, so a secret containing another is masked whole.
        _SNAPSHOT = tuple(sorted((*_pinned, *_recent), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with registered secrets, ``dapi...`` tokens, JWTs, Bearer credentials and
    ``token=``-style URL parameters masked. Linear in the length of ``text``."""
    if not text:
        return text
    for secret in _SNAPSHOT:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _DAPI.sub(MASK, text)
    text = _JWT.sub(MASK, text)
    text = _PARAM.sub(lambda m: m.group(1) + MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


class RedactSecrets(logging.Filter):
    """Rewrites a record in place so no handler can format a secret out of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the redacted exc_text is what gets printed
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, _redact_value(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the ``extra=`` fields,
    and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_HANDLER_NAME = "kb-stderr"


def configure_logging(*, verbose: bool = False, json_format: bool = False) -> logging.Handler:
    """Install (or replace) kb's stderr handler on the root logger; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactSecrets())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.INFO if verbose else logging.WARNING
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler
