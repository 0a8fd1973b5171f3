"""The ``sources`` field of chat completions: the cited passages, with their text.

Same entries as ``kb ask --json`` (``n``, ``source``, ``title``, ``section``/``page``) plus the
passage ``text`` and its ``score``, so a chat front end can show what ``[n]`` refers to without
another request.
"""

from __future__ import annotations

from typing import Any

from agent.rag.answer import Answer


def chat_sources(answer: Answer) -> list[dict[str, Any]]:
    """``answer.sources``, each cited retrieved passage with its text and score (the assistant's
    sources, which cite its own numbering, as they are)."""
    passages = answer.passages
    sources = []
    for item in answer.sources:
        if not passages or not 1 <= item["n"] <= len(passages):
            sources.append(item)
            continue
        passage = passages[item["n"] - 1]
        item = dict(item)
        item["text"] = passage.page_content
        if passage.metadata.get("score") is not None:
            item["score"] = passage.metadata["score"]
        sources.append(item)
    return sources
