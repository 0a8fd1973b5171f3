"""Logging for ``kb``: one stderr handler, human-readable or JSON lines, with secrets masked.

``configure_logging(verbose=, json_format=)`` is called by the ``kb`` app callback (``--verbose``,
``--log-json``). Without ``--verbose`` only warnings and errors are logged; with it, one INFO line
per model call (endpoint, command, tokens, latency, status) and the HTTP requests made.

Every record passes ``RedactSecrets`` before it is written: the configured Databricks token (and
any other value given to ``register_secret``), anything shaped like a Databricks token
(``dapi...``) and ``Bearer ...`` credentials become ``[REDACTED]`` in the message, its arguments,
structured fields and tracebacks.

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
_PATTERNS = [
    re.compile(r"dapi[0-9A-Za-z_\-]{4,}"),  # Databricks personal access tokens
    re.compile(r"(?i)(bearer\s+)[^\s'\",]+"),  # Authorization header values
]
_SECRETS: set[str] = set()
_LOCK = threading.Lock()

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a structured field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log record from now on (the token is registered when settings load)."""
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets, ``dapi...`` tokens and Bearer credentials masked."""
    if not text:
        return text
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + MASK, text)


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
