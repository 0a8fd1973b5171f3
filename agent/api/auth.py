"""Bearer-key authentication: ``KB_API_KEYS`` holds ``name:key`` pairs; the name is the caller.

Every key is compared with ``hmac.compare_digest`` and all keys are always compared, so neither
the content of a key nor which one matched shows in the timing. With no keys configured the API
is open and the caller is ``anonymous`` (``kb serve`` refuses that on a non-loopback address).

Each caller also has groups (``caller_groups``, kept on ``request.state.groups``): what it may read
(``ingest.access``). Every route passes them to retrieval and to the document routes.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from fastapi import Request

from agent.api.errors import ApiError
from ingest.access import MAX_RULES_BYTES, AccessRulesError, parse_groups

ANONYMOUS = "anonymous"
log = logging.getLogger("kb.api")


class Callers:
    def __init__(self, keys: dict[str, object]) -> None:
        self._keys = [(name, _secret(value).encode("utf-8")) for name, value in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str:
        """The caller's name for an ``Authorization`` header, or ``ApiError`` 401."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>' (keys are set in KB_API_KEYS)")
        candidate = presented.strip().encode("utf-8")
        found = None
        for name, key in self._keys:
            if hmac.compare_digest(candidate, key) and found is None:
                found = name
        if found is None:
            raise _unauthorized("invalid API key")
        return found


def _secret(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="kb"'})


def forwarded_user(request: Request) -> str | None:
    """Behind a Databricks App (``KB_TRUST_FORWARDED_USER``), the signed-in user the App's proxy
    names in ``X-Forwarded-Email``; ``None`` otherwise, or when the value is not a plausible name
    (never trusted without the setting: anyone reaching the server directly could send it)."""
    if not request.app.state.backend.settings.trust_forwarded_user:
        return None
    value = (request.headers.get("x-forwarded-email") or "").strip()
    if not value or len(value) > 254 or not value.isprintable() or any(c.isspace() for c in value):
        return None
    return value


def caller_groups(request: Request, name: str) -> frozenset[str]:
    """The caller's groups (``ingest.access``): an API key's third field (``name:key:hr|legal``); a
    user a Databricks App's proxy names (``forwarded_user``), the groups ``KB_ACCESS_USERS`` maps the
    user to; anyone else (no third field, an open server): no group, i.e. only what everyone may read."""
    settings = request.app.state.backend.settings
    if getattr(request.state, "forwarded", False):
        return user_groups(settings).get(name.lower(), frozenset())
    return frozenset(getattr(settings, "api_key_groups", {}).get(name, frozenset()))


WRITER_GROUP = "writer"


def is_writer(request: Request) -> bool:
    """May this caller add documents (``POST /api/documents``)? Those with the group ``writer``: a
    key's third field (``name:key:writer`` or ``name:key:hr|writer``), or a forwarded user that
    ``KB_ACCESS_USERS`` maps to it."""
    return WRITER_GROUP in getattr(request.state, "groups", frozenset())


_USERS: dict[str, tuple[float, int, dict[str, frozenset[str]]]] = {}


def user_groups(settings: object) -> dict[str, frozenset[str]]:
    """``KB_ACCESS_USERS``: a file of ``user@example.com: group, group`` lines (``#`` comments), re-read
    when it changes; {} when unset. Groups are not forwarded by the Databricks App proxy (README,
    "Access control", says how to produce this file from the workspace's groups)."""
    path = getattr(settings, "access_users", None)
    if not path:
        return {}

    key = str(path)
    try:
        stat = Path(path).stat()
        cached = _USERS.get(key)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        with open(path, "rb") as handle:
            data = handle.read(MAX_RULES_BYTES + 1)
    except OSError:
        log.warning("KB_ACCESS_USERS cannot be read: forwarded users get public documents only")
        return {}
    mapping: dict[str, frozenset[str]] = {}
    try:
        if len(data) > MAX_RULES_BYTES:
            raise AccessRulesError("the file is too large")
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                user, sep, groups = line.rpartition(":")
                if not sep or not user.strip():
                    raise AccessRulesError(f"line {number}: expected 'user: group, group'")
                mapping[user.strip().lower()] = parse_groups(groups, where=f"line {number}: ")
    except (AccessRulesError, UnicodeDecodeError) as exc:
        log.warning("KB_ACCESS_USERS is invalid (%s): forwarded users get public documents only",
                    getattr(exc, "message", type(exc).__name__))
        mapping = {}
    _USERS[key] = (stat.st_mtime, stat.st_size, mapping)
    return mapping


def require_caller(request: Request) -> str:
    """FastAPI dependency: the authenticated caller's name (also kept on ``request.state``); behind
    a Databricks App, the signed-in user (``forwarded_user``)."""
    callers: Callers = request.app.state.callers
    name = callers.identify(request.headers.get("authorization"))
    forwarded = forwarded_user(request)
    request.state.forwarded = forwarded is not None
    name = forwarded or name
    request.state.caller = name
    request.state.groups = caller_groups(request, name)
    return name
