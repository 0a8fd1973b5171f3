"""Bearer-key authentication: ``KB_API_KEYS`` holds ``name:key`` pairs; the name is the caller.

Every key is compared with ``hmac.compare_digest`` and all keys are always compared, so neither
the content of a key nor which one matched shows in the timing. With no keys configured the API
is open and the caller is ``anonymous`` (``kb serve`` refuses that on a non-loopback address).
"""

from __future__ import annotations

import hmac

from fastapi import Request

from agent.api.errors import ApiError

ANONYMOUS = "anonymous"


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


def require_caller(request: Request) -> str:
    """FastAPI dependency: the authenticated caller's name (also kept on ``request.state``)."""
    callers: Callers = request.app.state.callers
    name = callers.identify(request.headers.get("authorization"))
    request.state.caller = name
    return name
