"""The retrieval-augmented answer chain, as one LangChain Runnable.

    from agent.chain import build_rag_chain
    chain = build_rag_chain()                      # settings from the environment / .env
    out = chain.invoke({"question": "How many vacation days do I get?"})
    out["answer"], out["passages"]                  # text with [n] citations, the Documents cited by n
    for part in chain.stream("How do I request time off?"): ...   # {"passages": [...]}, then {"answer": "tok"}...

``cited_sources(answer, passages)`` maps ``[n]`` markers back to the passages.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from agent.prompts import ANSWER_PROMPT, format_passages
from agent.settings import Settings, load_settings


def _as_input(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"question": value}
    if isinstance(value, dict) and isinstance(value.get("question"), str):
        return dict(value)
    raise TypeError("the chain takes a question string or {'question': str}")


def _prompt_input(state: dict[str, Any]) -> dict[str, str]:
    return {"question": state["question"], "passages": format_passages(state["passages"])}


def build_rag_chain(
    settings: Settings | None = None, *, llm: Any = None, retriever: Any = None, k: int | None = None
) -> Runnable:
    """question -> {"question", "passages": [Document], "answer": str}.

    ``llm`` and ``retriever`` default to the configured ones (``agent.llm.build_llm``,
    ``agent.retrieval.build_retriever``); pass your own to compose or test.
    """
    if llm is None or retriever is None:
        settings = settings or load_settings()
    if retriever is None:
        from agent.retrieval import build_retriever

        retriever = build_retriever(settings, k=k, command="ask")
    if llm is None:
        from agent.llm import build_llm

        llm = build_llm(settings, command="ask")
    answer = RunnableLambda(_prompt_input) | ANSWER_PROMPT | llm | StrOutputParser()
    chain = (
        RunnableLambda(_as_input)
        | RunnablePassthrough.assign(passages=itemgetter("question") | retriever)
        | RunnablePassthrough.assign(answer=answer)
    )
    return chain.with_config(run_name="kb_rag_answer")


_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def cited_numbers(answer: str) -> list[int]:
    """Passage numbers cited as ``[1]``, ``[2][3]`` or ``[1, 2]``, in order of first citation."""
    numbers: list[int] = []
    for match in _CITATION.finditer(answer):
        for part in re.split(r"[,;]", match.group(1)):
            n = int(part.strip())
            if n not in numbers:
                numbers.append(n)
    return numbers


def cited_sources(answer: str, passages: list[Document]) -> list[dict[str, Any]]:
    """The passages the answer cites: ``[{"n", "source", "title", ...}]``; unknown numbers are ignored."""
    sources = []
    for n in cited_numbers(answer):
        if 1 <= n <= len(passages):
            meta = passages[n - 1].metadata
            item = {"n": n, "source": meta.get("source"), "title": meta.get("title")}
            if meta.get("section"):
                item["section"] = meta["section"]
            if meta.get("page"):
                item["page"] = meta["page"]
            sources.append(item)
    return sources
