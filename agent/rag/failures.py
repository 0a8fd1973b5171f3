"""``translate_failures``: the one place where a failed model call becomes the project's error.

    with translate_failures(partial=lambda: "".join(parts), endpoint=..., base_url=...):
        for token in model.stream(...): parts.append(token)

Remote failures (``openai``/``httpx``) raise the ``RemoteError`` family; a stream cut after text
arrived raises ``StreamInterruptedError`` keeping that text (``partial()``). The project's own
errors and bugs pass unchanged. Used by the answer service, the tool assistant and ``kb eval``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from agent.errors import chat_failure


def _nothing() -> str:
    return ""


@contextmanager
def translate_failures(
    *, partial: Callable[[], str] = _nothing, endpoint: str | None, base_url: str | None
) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = chat_failure(exc, partial=partial(), endpoint=endpoint or "?", base_url=base_url)
        if error is exc:
            raise
        raise error from None
