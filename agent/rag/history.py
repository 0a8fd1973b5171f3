"""Conversation history that fits the model's context, and where sessions are kept.

- ``trim_history(messages, max_tokens)``: the most recent whole turns within a token budget
  (``langchain_core.messages.trim_messages``, approximate token counts, always starting on a user
  turn so the role order stays valid).
- ``fit_history(messages, max_tokens)``: for the agent: the current turn (from the last user message
  on, tool calls included) is always kept; earlier turns are trimmed to what is left of the budget.
- ``shrinking`` / ``is_context_overflow``: if the endpoint still says a request is too long for the
  model, it is retried with less history (a quarter of the budget, then none).
- ``open_checkpointer(index_dir, session)``: a LangGraph checkpointer: SQLite under ``KB_INDEX_DIR``
  for a named session, in memory otherwise.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, trim_messages
from langchain_core.messages.utils import count_tokens_approximately

from agent.errors import UsageError

SESSIONS_FILE = "sessions.sqlite"
_SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def trim_history(messages: Sequence[BaseMessage], max_tokens: int) -> list[BaseMessage]:
    """The latest whole turns of ``messages`` that fit in ``max_tokens`` (approximate count)."""
    if max_tokens <= 0 or not messages:
        return []
    return trim_messages(
        list(messages),
        max_tokens=max_tokens,
        token_counter=count_tokens_approximately,
        strategy="last",
        start_on="human",
        allow_partial=False,
    )


def fit_history(messages: Sequence[BaseMessage], max_tokens: int) -> list[BaseMessage]:
    """Keep the current turn whole; trim earlier turns to the rest of the budget."""
    last_user = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    earlier, current = list(messages[:last_user]), list(messages[last_user:])
    if not earlier:
        return current
    budget = max_tokens - count_tokens_approximately(current)
    return trim_history(earlier, budget) + current


_OVERFLOW = re.compile(
    r"context (length|window)|too long|too many (input )?tokens|maximum (context|input)|exceeds? the (model's )?(limit|maximum)",
    re.I,
)


def is_context_overflow(exc: BaseException) -> bool:
    """True when the serving endpoint refused a request for being longer than the model's context."""
    import openai

    return isinstance(exc, openai.BadRequestError) and bool(_OVERFLOW.search(str(exc)))


def shrinking(history: Sequence[BaseMessage], max_tokens: int) -> list[list[BaseMessage]]:
    """Histories to try in turn when the endpoint says the request is too long: the budget, a
    quarter of it, none."""
    tries = [trim_history(history, max_tokens), trim_history(history, max_tokens // 4), []]
    unique: list[list[BaseMessage]] = []
    for each in tries:
        if not unique or len(each) < len(unique[-1]):
            unique.append(each)
    return unique


def check_session_name(name: str) -> str:
    if not _SESSION_NAME.fullmatch(name or ""):
        raise UsageError(
            f"invalid session name '{name}'", hint="use up to 64 letters, digits and _ . @ - (starting with a letter or digit)"
        )
    return name


def open_checkpointer(index_dir: Path, session: str | None) -> Any:
    """SqliteSaver on ``<index_dir>/sessions.sqlite`` for a named session, else an in-memory saver."""
    if session is None:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver()
    from langgraph.checkpoint.sqlite import SqliteSaver

    check_session_name(session)
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(Path(index_dir) / SESSIONS_FILE, check_same_thread=False, timeout=30)
    return SqliteSaver(connection)


def close_checkpointer(checkpointer: Any) -> None:
    connection = getattr(checkpointer, "conn", None)
    if connection is not None:
        connection.close()
