"""``usage_context``: the string map sent with every Databricks request so spend can be attributed.

Databricks records it per request (system tables, AI Gateway usage tracking). It must be a map of
string to string; kb keeps it small so no request is ever refused or truncated for it:

- at most ``MAX_KEYS`` (32) keys on the wire, of which at most ``MAX_USER_KEYS`` (30) configured in
  ``KB_USAGE_CONTEXT`` (kb adds ``command`` and, behind ``kb serve``, ``caller``);
- keys 1-64 characters, values at most 256 characters, no control characters;
- at most ``MAX_USER_BYTES`` (3584) bytes of JSON configured, ``MAX_TOTAL_BYTES`` (4096) in all.

``validate_configured`` checks ``KB_USAGE_CONTEXT`` when settings load (a clear error naming the
key); ``build`` merges the automatic keys under the configured ones (the user's keys win) and
clips automatic values, which may come from outside (a caller's name).

No heavy imports here: ``agent.settings`` uses it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

MAX_KEYS = 32
MAX_USER_KEYS = 30
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 256
MAX_AUTOMATIC_VALUE_CHARS = 128
MAX_USER_BYTES = 3584
MAX_TOTAL_BYTES = 4096
AUTOMATIC_KEYS = ("command", "caller")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def size_bytes(context: Mapping[str, str]) -> int:
    """Size of the map as sent (compact JSON, UTF-8)."""
    return len(json.dumps(dict(context), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def validate_configured(context: Mapping[str, Any]) -> dict[str, str]:
    """The configured map, checked against the limits; ``ValueError`` says what is wrong."""
    if len(context) > MAX_USER_KEYS:
        raise ValueError(
            f"has {len(context)} keys; at most {MAX_USER_KEYS} are allowed "
            f"(kb adds {' and '.join(AUTOMATIC_KEYS)}; Databricks gets at most {MAX_KEYS})"
        )
    checked: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise ValueError(f"key '{str(key)[:80]}' must be 1-{MAX_KEY_CHARS} characters")
        if _CONTROL.search(key):
            raise ValueError(f"key {key!r} contains a control character")
        if not isinstance(value, str):
            raise ValueError(f"value of '{key}' must be a string, got {type(value).__name__}")
        if len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"value of '{key}' is {len(value)} characters; at most {MAX_VALUE_CHARS} are allowed")
        if _CONTROL.search(value):
            raise ValueError(f"value of '{key}' contains a control character")
        checked[key] = value
    if size_bytes(checked) > MAX_USER_BYTES:
        raise ValueError(f"is {size_bytes(checked)} bytes as JSON; at most {MAX_USER_BYTES} are allowed")
    return checked


def _clip(value: Any, limit: int) -> str:
    return _CONTROL.sub(" ", str(value))[:limit]


def build(configured: Mapping[str, str], command: str, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{"command": command, **extra}`` under the configured keys (which win), within the limits.

    Automatic values are stringified and clipped; automatic keys beyond the limits are dropped
    (``command`` last), configured keys never are (they were validated at load).
    """
    automatic: dict[str, str] = {"command": _clip(command, MAX_AUTOMATIC_VALUE_CHARS)}
    for key, value in (extra or {}).items():
        if value is None:
            continue
        key = _clip(key, MAX_KEY_CHARS)
        if key:
            automatic[key] = _clip(value, MAX_AUTOMATIC_VALUE_CHARS)
    context = {str(k): str(v) for k, v in configured.items()}
    for key in sorted(automatic, key=lambda k: k != "command"):  # command first, then the rest in order
        if key in context:
            continue  # the user's key wins
        candidate = {**context, key: automatic[key]}
        if len(candidate) > MAX_KEYS or size_bytes(candidate) > MAX_TOTAL_BYTES:
            continue
        context = candidate
    return context
