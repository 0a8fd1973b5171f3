"""Backing off from a rate-limited endpoint, shared by all worker threads of one client.

When any request gets a 429, every worker pauses until the endpoint's ``Retry-After`` (or an
exponential, jittered delay) has passed, instead of each hammering it on its own schedule.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

MAX_DELAY = 30.0


class SharedPause:
    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        delay = self._until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def back_off(self, exc: BaseException, attempt: int) -> float:
        """Pause everyone for the delay this failure asks for; returns it."""
        delay = retry_after_seconds(exc)
        if delay is None:
            delay = min(MAX_DELAY, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
        with self._lock:
            self._until = max(self._until, time.monotonic() + delay)
        return delay


def retry_after_seconds(exc: BaseException) -> float | None:
    """The ``Retry-After`` (seconds) of an HTTP error response, capped, if it has one."""
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return min(MAX_DELAY, max(0.0, float(value) / 1000))
        value = headers.get("retry-after")
        return min(MAX_DELAY, max(0.0, float(value))) if value is not None else None
    except (TypeError, ValueError):
        return None


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None
