"""The answer chain's contract in every mode (invoke, stream, ainvoke, astream), with fake models:
the parts and their order, config reaching the retriever, the runs tracing sees, and streaming
without a worker thread per chunk."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.base import BaseTracer

from agent.rag.chain import build_rag_chain

PASSAGES = [Document(page_content="Employees get 23 vacation days.", metadata={"source": "hr/pto.md", "title": "PTO"})]
ANSWER = "You get 23 vacation days [1]."


def _chain(seen: list[Any] | None = None):
    def given(question: str, config: dict) -> list[Document]:
        if seen is not None:
            seen.append((question, config.get("configurable", {}).get("team"), threading.get_ident()))
        return PASSAGES

    async def agiven(question: str, config: dict) -> list[Document]:
        return given(question, config)

    llm = GenericFakeChatModel(messages=iter([AIMessage(content=ANSWER)] * 4))
    return build_rag_chain(llm=llm, retriever=RunnableLambda(given, afunc=agiven, name="kb_passages"))


async def _collect(iterator) -> list:
    return [part async for part in iterator]


def test_stream_parts_come_in_order_and_add_up_to_invoke() -> None:
    parts = list(_chain().stream({"question": "How many days?", "session": "s1"}))
    assert parts[0] == {"question": "How many days?", "session": "s1"}  # the input first, extra keys kept
    assert parts[1] == {"passages": PASSAGES}
    assert all(list(p) == ["answer"] for p in parts[2:]) and len(parts) > 3  # token by token
    assert "".join(p["answer"] for p in parts[2:]) == ANSWER
    whole = parts[0]
    for part in parts[1:]:
        whole = whole + part  # LangChain's AddableDict: what a parent run records as the output
    assert whole == _chain().invoke({"question": "How many days?", "session": "s1"})
    assert whole == {"question": "How many days?", "session": "s1", "passages": PASSAGES, "answer": ANSWER}


def test_async_modes_give_the_same_results() -> None:
    assert asyncio.run(_chain().ainvoke("How many days?")) == {
        "question": "How many days?", "passages": PASSAGES, "answer": ANSWER}
    parts = asyncio.run(_collect(_chain().astream("How many days?")))
    assert parts[:2] == [{"question": "How many days?"}, {"passages": PASSAGES}]
    assert "".join(p.get("answer", "") for p in parts) == ANSWER


def test_bad_input_is_refused() -> None:
    with pytest.raises(TypeError, match="question string"):
        _chain().invoke({"query": "no question key"})


def test_config_reaches_the_retriever_in_every_mode() -> None:
    seen: list[Any] = []
    config = {"configurable": {"team": "hr"}}
    _chain(seen).invoke("a", config)
    list(_chain(seen).stream("b", config))
    asyncio.run(_chain(seen).ainvoke("c", config))
    asyncio.run(_collect(_chain(seen).astream("d", config)))
    assert [(question, team) for question, team, _ in seen] == [("a", "hr"), ("b", "hr"), ("c", "hr"), ("d", "hr")]


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.threads.append(threading.get_ident())


def test_streaming_runs_in_the_callers_thread() -> None:
    """No hop to a worker thread for the retriever or for each streamed token (that cost ~10 ms a question)."""
    seen: list[Any] = []
    tokens = Tokens()
    parts = list(_chain(seen).stream("How many days?", {"callbacks": [tokens]}))
    assert "".join(p.get("answer", "") for p in parts) == ANSWER
    here = threading.get_ident()
    assert tokens.threads and set(tokens.threads) == {here}
    assert [thread for _, _, thread in seen] == [here]


class Runs(BaseTracer):
    def __init__(self) -> None:
        super().__init__()
        self.roots: list[Any] = []

    def _persist_run(self, run: Any) -> None:
        self.roots.append(run)


def _descendants(run: Any) -> list[Any]:
    found = []
    for child in run.child_runs:
        found += [child, *_descendants(child)]
    return found


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
def test_tracing_sees_the_retriever_and_the_model_under_one_run(mode: str) -> None:
    runs = Runs()
    chain, config = _chain(), {"callbacks": [runs]}
    if mode == "invoke":
        chain.invoke("How many days?", config)
    elif mode == "stream":
        list(chain.stream("How many days?", config))
    elif mode == "ainvoke":
        asyncio.run(chain.ainvoke("How many days?", config))
    else:
        asyncio.run(_collect(chain.astream("How many days?", config)))
    [root] = runs.roots
    assert root.name == "kb_rag_answer"
    assert root.outputs["answer"] == ANSWER and root.outputs["passages"] == PASSAGES
    inner = {(run.run_type, run.name) for run in _descendants(root)}
    assert ("chain", "kb_passages") in inner and ("llm", "GenericFakeChatModel") in inner
    assert ("prompt", "ChatPromptTemplate") in inner
