"""Token accounting: what a model call used, and the total over a run, or "unknown".

A number is only given when every model call in the run reported its usage; otherwise the total
is ``{"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "reported": False}``
("unknown") rather than an undercount. Streamed calls count too: ``DatabricksChatOpenAI`` asks for
usage in the stream and folds usage reported cumulatively on every chunk into one figure.

    with collect_usage() as usage:      # every LangChain model call inside is counted
        chain.invoke(...)
    usage.totals()                      # {"prompt_tokens", "completion_tokens", "total_tokens", "reported"}
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

UNKNOWN: dict[str, Any] = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "reported": False}


def usage_from_result(result: LLMResult) -> tuple[int, int] | None:
    """(prompt, completion) tokens of one model call, or ``None`` when the server reported none."""
    for generations in result.generations or []:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if usage:
                return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    token_usage = (result.llm_output or {}).get("token_usage") or (result.llm_output or {}).get("usage")
    if isinstance(token_usage, dict) and ("prompt_tokens" in token_usage or "completion_tokens" in token_usage):
        return int(token_usage.get("prompt_tokens") or 0), int(token_usage.get("completion_tokens") or 0)
    return None


def usage_json(prompt: int | None, completion: int | None) -> dict[str, Any]:
    if prompt is None or completion is None:
        return dict(UNKNOWN)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "reported": True}


class UsageCollector(BaseCallbackHandler):
    """Sums usage over every model call it sees; any call without usage makes the total unknown."""

    def __init__(self, parent: UsageCollector | None = None) -> None:
        super().__init__()
        self.parent = parent  # an enclosing collect_usage() block counts the same calls
        self._lock = threading.Lock()
        self.calls = 0
        self.unreported = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        usage = usage_from_result(response)
        with self._lock:
            self.calls += 1
            if usage is None:
                self.unreported += 1
            else:
                self.prompt_tokens += usage[0]
                self.completion_tokens += usage[1]
        if self.parent is not None:
            self.parent.on_llm_end(response, **kwargs)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        with self._lock:  # a failed or cut-off call may have used tokens nobody reported
            self.calls += 1
            self.unreported += 1
        if self.parent is not None:
            self.parent.on_llm_error(error, **kwargs)

    def totals(self) -> dict[str, Any]:
        """OpenAI-style totals plus ``reported``; unknown when no call, or any call, went unreported."""
        with self._lock:
            if self.calls == 0 or self.unreported:
                return dict(UNKNOWN)
            return usage_json(self.prompt_tokens, self.completion_tokens)


_current: ContextVar[UsageCollector | None] = ContextVar("kb_usage_collector", default=None)
register_configure_hook(_current, inheritable=True)


@contextmanager
def collect_usage() -> Iterator[UsageCollector]:
    """Count every LangChain model call made inside the block (threads and nested runs included)."""
    collector = UsageCollector(parent=_current.get())
    token = _current.set(collector)
    try:
        yield collector
    finally:
        _current.reset(token)
