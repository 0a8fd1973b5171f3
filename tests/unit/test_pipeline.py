"""The answer pipeline's logic (``agent.rag.service``) with fake chat models: citation numbering,
the relevance gate, follow-up rewriting and history trimming, usage counting (a rewrite included),
error translation and a cut stream; and the tool assistant's ``Answer``. No HTTP server: the
network is blocked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from agent.errors import RemoteConnectionError, StreamInterruptedError, UsageError
from agent.rag.prompts import ANSWER_SYSTEM, CHAT_SYSTEM, CONDENSE_SYSTEM
from agent.rag.answer import BELOW_FLOOR, NO_PASSAGES, Answer
from agent.rag.failures import translate_failures
from agent.rag.service import AnswerService, as_messages
from agent.settings import load_settings
from agent.usage.tokens import UNKNOWN, collect_usage

pytestmark = pytest.mark.unit

REQUEST = httpx.Request("POST", "http://serving.invalid/chat")


class Said:
    """One scripted model reply: text (streamed word by word), tool calls, usage, or a failure
    (before the first token, or after ``cut_after`` tokens)."""

    def __init__(self, text: str = "", *, usage: tuple[int, int] | None = (10, 2), tool_calls: list | None = None,
                 error: BaseException | None = None, cut_after: int | None = None) -> None:
        self.text, self.usage, self.tool_calls, self.error, self.cut_after = text, usage, tool_calls or [], error, cut_after


class ScriptedChat(BaseChatModel):
    """A chat model that answers from a script and records what it was sent."""

    script: list[Any]
    seen: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChat:
        return self

    def _next(self, messages: list[BaseMessage]) -> Said:
        self.seen.append(list(messages))
        said = self.script.pop(0)
        return said if isinstance(said, Said) else Said(said)

    def _usage(self, said: Said) -> dict[str, int] | None:
        if said.usage is None:
            return None
        return {"input_tokens": said.usage[0], "output_tokens": said.usage[1], "total_tokens": sum(said.usage)}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        said = self._next(messages)
        if said.error is not None:
            raise said.error
        message = AIMessage(said.text, tool_calls=said.tool_calls, usage_metadata=self._usage(said))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        said = self._next(messages)
        if said.error is not None and said.cut_after is None:
            raise said.error
        words = said.text.split(" ")
        for n, word in enumerate(words):
            if said.cut_after is not None and n == said.cut_after:
                raise said.error
            yield ChatGenerationChunk(message=AIMessageChunk(content=word if n == 0 else " " + word))
        for n, call in enumerate(said.tool_calls):
            yield ChatGenerationChunk(message=AIMessageChunk(
                content="", tool_call_chunks=[{"name": call["name"], "args": __import__("json").dumps(call["args"]),
                                               "id": call["id"], "index": n}]))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=self._usage(said)))


class ListRetriever:
    def __init__(self, *documents: Document) -> None:
        self.documents = list(documents)
        self.queries: list[str] = []

    def invoke(self, query: str, k: int = 5, **kwargs: Any) -> list[Document]:
        self.queries.append(query)
        return self.documents[:k]


def doc(source: str, text: str, score: float = 0.8) -> Document:
    return Document(page_content=text, metadata={"source": source, "title": source.upper(), "score": score,
                                                 "dense_score": score})


PTO = doc("hr/pto.md", "Full-time employees get 23 vacation days.")
CARRY = doc("hr/carry.md", "Up to 4 unused days carry over.")
VPN = doc("it/vpn.md", "The VPN gateway is vpn.acme.example.")


def service(*script: Any, documents: tuple[Document, ...] = (PTO, CARRY, VPN), **settings: Any) -> tuple[AnswerService, ScriptedChat, ListRetriever]:
    llm = ScriptedChat(script=list(script), seen=[])
    retriever = ListRetriever(*documents)
    return AnswerService(load_settings(**settings), llm=llm, retriever=retriever), llm, retriever


def astream_all(svc: AnswerService, question: str, **kwargs: Any) -> list[tuple[str, Any]]:
    async def main() -> list[tuple[str, Any]]:
        return [event async for event in svc.astream(question, **kwargs)]

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def _clean(env: Path) -> None:
    """Settings from nothing but the test's own arguments."""


# ---------------------------------------------------------------- citations


def test_passages_are_numbered_and_citations_map_back_to_them() -> None:
    svc, llm, _ = service(Said("Carry over 4 [2]; you get 23 [1][2].", usage=(100, 9)))
    events = list(svc.stream("How many vacation days?"))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "passages" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    answer: Answer = events[-1][1]
    assert "".join(v for k, v in events if k == "token") == answer.text == "Carry over 4 [2]; you get 23 [1][2]."
    assert answer.citations == [2, 1]
    assert [(s["n"], s["source"]) for s in answer.sources] == [(2, "hr/carry.md"), (1, "hr/pto.md")]
    system, human = llm.seen[0]
    assert system.content == ANSWER_SYSTEM  # no history: the single-question prompt
    assert '<passage n="1" source="hr/pto.md"' in human.content and '<passage n="3" source="it/vpn.md"' in human.content
    assert answer.usage == {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109, "reported": True}
    assert answer.refused is False and answer.standalone is None and answer.timing["total"] >= answer.timing["retrieve"]
    data = answer.to_json()
    assert data["answer"] == answer.text and [p["rank"] for p in data["passages"]] == [1, 2, 3]
    assert "standalone_question" not in data and "refused" not in data


def test_a_citation_of_no_passage_is_not_a_source() -> None:
    svc, _, _ = service(Said("It is 23 [1] and [7]."), documents=(PTO,))
    answer = svc.run("days?")
    assert answer.citations == [1, 7] and [s["n"] for s in answer.sources] == [1]


# ---------------------------------------------------------------- the relevance gate


def test_off_topic_is_declined_without_a_model_call() -> None:
    low = doc("it/vpn.md", "The VPN gateway.", score=0.05)
    svc, llm, _ = service(documents=(low,), min_relevance=0.3)
    events = list(svc.stream("Which grand prix did Tyrrell win?"))
    answer = events[-1][1]
    assert answer.refused and answer.refusal_reason == BELOW_FLOOR and "does not cover" in answer.text
    assert ("token", answer.text) in events  # the refusal streams like an answer
    assert answer.sources == [] and llm.seen == [] and answer.usage == UNKNOWN  # no model call: counts unknown
    assert answer.to_json()["refused"] is True


def test_nothing_retrieved_is_declined() -> None:
    svc, llm, _ = service(documents=())
    answer = svc.run("anything?")
    assert answer.refused and answer.refusal_reason == NO_PASSAGES and llm.seen == []


# ---------------------------------------------------------------- follow-ups: condense, history, usage


HISTORY = [("user", "How many vacation days do I get?"), ("assistant", "You get 23 vacation days [1].")]


def test_a_follow_up_is_rewritten_retrieved_and_answered_with_history() -> None:
    svc, llm, retriever = service(Said("How many vacation days carry over?", usage=(30, 6)),
                                  Said("Up to 4 carry over [2].", usage=(200, 7)))
    events = list(svc.stream("and how many carry over?", history=HISTORY))
    assert events[0] == ("rewrite", "How many vacation days carry over?")
    answer = events[-1][1]
    assert retriever.queries == ["How many vacation days carry over?"]
    condense, reply = llm.seen
    assert condense[0].content == CONDENSE_SYSTEM
    assert '<turn role="assistant">You get 23 vacation days.</turn>' in condense[1].content  # old [n] removed
    assert [type(m).__name__ for m in reply] == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"]
    assert reply[0].content == CHAT_SYSTEM and reply[2].content == "You get 23 vacation days."
    assert "(As a standalone question: How many vacation days carry over?)" in reply[-1].content
    assert answer.standalone == "How many vacation days carry over?" and answer.text == "Up to 4 carry over [2]."
    assert answer.usage == {"prompt_tokens": 230, "completion_tokens": 13, "total_tokens": 243, "reported": True}
    assert answer.to_json()["standalone_question"] == answer.standalone


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_rewrite_then_a_refusal_still_counts_the_rewrite(path: str) -> None:
    """The drift bug: kb-rag reported zero usage when it declined after rewriting a follow-up."""
    low = doc("it/vpn.md", "The VPN gateway.", score=0.05)
    svc, llm, _ = service(Said("Tyrrell grand prix wins", usage=(40, 5)), documents=(low,), min_relevance=0.3)
    events = list(svc.stream("and which races?", history=HISTORY)) if path == "sync" else \
        astream_all(svc, "and which races?", history=HISTORY)
    answer = events[-1][1]
    assert answer.refused and len(llm.seen) == 1
    assert answer.usage == {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45, "reported": True}


def test_history_is_trimmed_to_the_token_budget_for_every_caller() -> None:
    long_history = []
    for n in range(6):
        long_history += [("user", f"question {n} " + "word " * 40), ("assistant", f"answer {n} " + "word " * 40)]
    svc, llm, _ = service(Said("rewritten"), Said("ok [1]."), chat_history_tokens=120)
    svc.run("and now?", history=long_history)
    reply = llm.seen[1]
    kept = [m.content for m in reply[1:-1]]
    assert len(kept) == 2 and kept[0].startswith("question 5") and kept[1].startswith("answer 5")
    assert svc.history(long_history) == svc.history(as_messages(long_history))  # tuples and messages alike


def test_no_history_budget_means_no_rewrite() -> None:
    svc, llm, retriever = service(Said("ok [1]."), chat_history_tokens=0)
    answer = svc.run("and now?", history=HISTORY)
    assert len(llm.seen) == 1 and retriever.queries == ["and now?"] and answer.standalone is None


def test_too_long_for_the_model_is_retried_with_less_history() -> None:
    too_long = openai.BadRequestError("Input is too long for requested model.",
                                      response=httpx.Response(400, request=REQUEST), body=None)
    history = []
    for n in range(4):
        history += [("user", f"q{n} " + "w " * 30), ("assistant", f"a{n} " + "w " * 30)]
    svc, llm, _ = service(Said("rewrite"), Said(error=too_long), Said("answer [1]."), chat_history_tokens=400)
    answer = svc.run("q4", history=history)
    assert answer.text == "answer [1]."
    first, second = [len(m) for m in llm.seen[1:]]
    assert first == 2 + 8 and 2 <= second < first  # all earlier turns, then what a quarter of the budget holds


def test_the_async_path_gives_the_same_answer() -> None:
    sync_svc, _, _ = service(Said("rewritten", usage=(30, 6)), Said("Up to 4 [2].", usage=(200, 7)))
    async_svc, _, _ = service(Said("rewritten", usage=(30, 6)), Said("Up to 4 [2].", usage=(200, 7)))
    one = list(sync_svc.stream("and carry over?", history=HISTORY, k=2))
    two = astream_all(async_svc, "and carry over?", history=HISTORY, k=2)
    assert [k for k, _ in one] == [k for k, _ in two]
    a, b = one[-1][1], two[-1][1]
    assert (a.text, a.sources, a.usage, a.standalone, len(a.passages)) == (b.text, b.sources, b.usage, b.standalone, 2)


# ---------------------------------------------------------------- failures


def test_a_cut_stream_keeps_the_partial_text() -> None:
    cut = openai.APIConnectionError(request=REQUEST)
    svc, _, _ = service(Said("You get twenty three days [1].", error=cut, cut_after=3))
    tokens: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        for kind, value in svc.stream("days?"):
            if kind == "token":
                tokens.append(value)
    assert info.value.partial == "".join(tokens) == "You get twenty"
    partial = Answer.interrupted("days?", info.value)
    assert partial.partial and partial.text == "You get twenty" and partial.to_json()["partial"] is True
    assert "cut off" in partial.to_json()["error"]


def test_a_failure_before_any_text_is_the_remote_error() -> None:
    svc, _, _ = service(Said(error=openai.APIConnectionError(request=REQUEST)))
    with pytest.raises(RemoteConnectionError):
        svc.run("days?")


def test_translate_failures_passes_our_errors_and_bugs_unchanged() -> None:
    for error in (UsageError("ours"), ValueError("a bug")):
        with pytest.raises(type(error)) as info, translate_failures(endpoint="e", base_url=None):
            raise error
        assert info.value is error
    with pytest.raises(StreamInterruptedError) as cut, translate_failures(partial=lambda: "so far", endpoint="e", base_url="u"):
        raise openai.APIConnectionError(request=REQUEST)
    assert cut.value.partial == "so far"


def test_an_enclosing_usage_block_sees_the_pipeline_calls_once() -> None:
    svc, _, _ = service(Said("23 [1].", usage=(50, 5)))
    with collect_usage() as outer:
        answer = svc.run("days?")
    assert outer.totals() == answer.usage == {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55,
                                              "reported": True}


# ---------------------------------------------------------------- the tool assistant returns an Answer


def test_the_assistant_returns_the_same_answer_shape() -> None:
    from agent.assistant.service import build_assistant, run_assistant

    llm = ScriptedChat(script=[
        Said("", tool_calls=[{"name": "search_knowledge", "args": {"query": "vacation"}, "id": "call_1"}], usage=(80, 9)),
        Said("You get 23 vacation days [1].", usage=(120, 8)),
    ], seen=[])
    events: list[dict] = []
    answer = run_assistant(build_assistant(load_settings(), llm=llm, retriever=ListRetriever(PTO)), "vacation?",
                           events.append)
    assert isinstance(answer, Answer) and answer.question == "vacation?"
    assert answer.text == "You get 23 vacation days [1]." and answer.citations == [1]
    assert answer.sources[0]["source"] == "hr/pto.md" and answer.steps[0]["tool"] == "search_knowledge"
    assert answer.usage == {"prompt_tokens": 200, "completion_tokens": 17, "total_tokens": 217, "reported": True}
    assert [e["type"] for e in events][:2] == ["tool_call", "tool_result"]
    data = answer.to_json()
    assert data["steps"] == answer.steps and data["stopped"] is None and data["consulted"][0]["source"] == "hr/pto.md"
