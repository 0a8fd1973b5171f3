"""Run the answer chain once: stream tokens to a callback, collect passages, citations and usage,
and turn remote failures into the project's errors (a stream cut mid-answer keeps the partial text).

Shared by ``kb ask`` and the HTTP API so both give the same JSON shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document

from agent.chain import cited_sources
from agent.errors import chat_failure
from agent.retrieval import result_json
from agent.tokens import UNKNOWN


@dataclass
class AnswerResult:
    question: str
    answer: str
    passages: list[Document] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=lambda: dict(UNKNOWN))  # no model call: counts unknown

    @property
    def sources(self) -> list[dict[str, Any]]:
        return cited_sources(self.answer, self.passages)

    def to_json(self) -> dict[str, Any]:
        return answer_json(self.question, self.answer, self.passages, self.usage)


def answer_json(question: str, answer: str, passages: list[Document], usage: dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of one answer (``kb ask --json``, chat turns, ``/api/ask``)."""
    return {
        "question": question,
        "answer": answer,
        "sources": cited_sources(answer, passages),
        "usage": usage,
        "passages": [result_json(i, d) for i, d in enumerate(passages, 1)],
    }


def usage_totals(by_model: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style usage from LangChain's per-model usage metadata; "unknown" when none was reported.

    Deprecated: it cannot see calls that reported nothing, so a total can be short yet say
    ``reported: True``. Use ``agent.tokens.collect_usage()`` / ``.totals()`` instead.
    """
    if not by_model:
        return dict(UNKNOWN)
    prompt = sum(int(u.get("input_tokens") or 0) for u in by_model.values())
    completion = sum(int(u.get("output_tokens") or 0) for u in by_model.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "reported": True}


def run_answer(
    chain: Any,
    question: str,
    *,
    on_passages: Callable[[list[Document]], None] | None = None,
    on_token: Callable[[str], None] | None = None,
    endpoint: str = "?",
    base_url: str | None = None,
) -> AnswerResult:
    from agent.tokens import collect_usage

    result = AnswerResult(question=question, answer="")
    parts: list[str] = []
    try:
        with collect_usage() as usage:
            for piece in chain.stream({"question": question}):
                if "passages" in piece:
                    result.passages = list(piece["passages"])
                    if on_passages:
                        on_passages(result.passages)
                if piece.get("answer"):
                    parts.append(piece["answer"])
                    if on_token:
                        on_token(piece["answer"])
            result.usage = usage.totals()  # "unknown" unless every model call reported usage
    except Exception as exc:
        error = chat_failure(exc, partial="".join(parts), endpoint=endpoint, base_url=base_url)
        if error is exc:
            raise
        raise error from None
    result.answer = "".join(parts)
    return result
