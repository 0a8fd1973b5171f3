"""The retrieval-augmented answer chain, as one LangChain Runnable.

    from agent.rag.chain import build_rag_chain
    chain = build_rag_chain()                      # settings from the environment / .env
    out = chain.invoke({"question": "How many vacation days do I get?"})
    out["answer"], out["passages"]                  # text with [n] citations, the Documents cited by n
    for part in chain.stream("How do I request time off?"): ...   # {"question"}, {"passages": [...]}, {"answer": "tok"}...

``cited_sources(answer, passages)`` maps ``[n]`` markers back to the passages.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.utils import AddableDict

from agent.rag.prompts import ANSWER_PROMPT, format_passages
from agent.rag.retrieval import build_retriever
from agent.settings import Settings, load_settings


def _as_input(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"question": value}
    if isinstance(value, dict) and isinstance(value.get("question"), str):
        return dict(value)
    raise TypeError("the chain takes a question string or {'question': str}")


def _prompt_input(state: dict[str, Any]) -> dict[str, str]:
    return {"question": state["question"], "passages": format_passages(state["passages"])}


def _merge(inputs: Iterator[Any]) -> Any:
    """The whole input of a ``transform`` call (chunks added up, as LangChain does)."""
    whole: Any = None
    for chunk in inputs:
        whole = chunk if whole is None else whole + chunk
    return whole


class RagChain(Runnable[Any, dict[str, Any]]):
    """question -> retrieve -> answer, streamed without worker threads.

    The same contract as ``RunnablePassthrough.assign(passages=...) | .assign(answer=...)``, which
    this replaces: that composition hands every streamed chunk to a worker thread, ~10 ms a
    question. Here the retriever and the answer chain (prompt | model | parser) run inline with the
    propagated config, so callbacks, tracing (retriever and model runs nested under this one) and
    ``configurable`` values reach them as before.
    """

    def __init__(self, retriever: Any, answer: Runnable, name: str = "kb_rag_answer") -> None:
        self.retriever = coerce_to_runnable(retriever)
        self.answer = answer
        self.name = name

    # ------------------------------------------------------------ invoke

    def _invoke(self, value: Any, config: RunnableConfig) -> dict[str, Any]:
        state = _as_input(value)
        state["passages"] = self.retriever.invoke(state["question"], config)
        state["answer"] = self.answer.invoke(dict(state), config)
        return state

    async def _ainvoke(self, value: Any, config: RunnableConfig) -> dict[str, Any]:
        state = _as_input(value)
        state["passages"] = await self.retriever.ainvoke(state["question"], config)
        state["answer"] = await self.answer.ainvoke(dict(state), config)
        return state

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._call_with_config(self._invoke, input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return await self._acall_with_config(self._ainvoke, input, config)

    # ------------------------------------------------------------ stream: {"question"}, {"passages"}, {"answer": token}...

    def _transform(self, inputs: Iterator[Any], config: RunnableConfig) -> Iterator[AddableDict]:
        state = _as_input(_merge(inputs))
        yield AddableDict(state)
        state["passages"] = self.retriever.invoke(state["question"], config)
        yield AddableDict(passages=state["passages"])
        for token in self.answer.stream(dict(state), config):
            yield AddableDict(answer=token)

    async def _atransform(self, inputs: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[AddableDict]:
        whole: Any = None
        async for chunk in inputs:
            whole = chunk if whole is None else whole + chunk
        state = _as_input(whole)
        yield AddableDict(state)
        state["passages"] = await self.retriever.ainvoke(state["question"], config)
        yield AddableDict(passages=state["passages"])
        async for token in self.answer.astream(dict(state), config):
            yield AddableDict(answer=token)

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AddableDict]:
        yield from self._transform_stream_with_config(input, self._transform, config)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AddableDict]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AddableDict]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config):
            yield chunk

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[AddableDict]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk


def build_rag_chain(
    settings: Settings | None = None, *, llm: Any = None, retriever: Any = None, k: int | None = None
) -> Runnable:
    """question -> {"question", "passages": [Document], "answer": str}.

    ``llm`` and ``retriever`` default to the configured ones (``agent.databricks.llm.build_llm``,
    ``agent.rag.retrieval.build_retriever``); pass your own to compose or test. ``stream`` yields
    ``{"question"}`` (and any other input keys), then ``{"passages": [...]}``, then
    ``{"answer": token}`` parts; ``invoke``, ``ainvoke`` and ``astream`` work too.
    """
    if llm is None or retriever is None:
        settings = settings or load_settings()
    if retriever is None:
        retriever = build_retriever(settings, k=k, command="ask")
    if llm is None:
        from agent.databricks.llm import build_llm  # heavy: langchain_openai + openai, only when no llm is passed

        llm = build_llm(settings, command="ask")
    answer = RunnableLambda(_prompt_input) | ANSWER_PROMPT | llm | StrOutputParser()
    return RagChain(retriever, answer)


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
