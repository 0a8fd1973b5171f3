"""The ``sources`` field of chat completions: the cited passages, with their text.

Same entries as ``kb ask --json`` (``n``, ``source``, ``title``, ``section``/``page``) plus the
passage ``text`` and its ``score``, so a chat front end can show what ``[n]`` refers to without
another request.
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document

from agent.chain import cited_sources


def chat_sources(answer: str, passages: list[Document]) -> list[dict[str, Any]]:
    sources = []
    for item in cited_sources(answer, passages):
        passage = passages[item["n"] - 1]
        item = dict(item)
        item["text"] = passage.page_content
        if passage.metadata.get("score") is not None:
            item["score"] = passage.metadata["score"]
        sources.append(item)
    return sources
