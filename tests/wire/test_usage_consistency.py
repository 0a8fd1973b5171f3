"""Every path reports tokens the same way: exact only when every model call reported its usage,
``{"prompt_tokens": None, ..., "reported": False}`` otherwise (including when no model was called).

A server that reports usage for one call and not for the next must not give a short total marked
``reported: true`` (LangChain's ``get_usage_metadata_callback`` silently skips such calls)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langgraph.checkpoint.memory import InMemorySaver

from agent.assistant.service import build_assistant, run_assistant
from agent.rag.conversation import build_chat, run_chat_turn
from agent.evaluation.evaluate import GoldQuestion, evaluate_answers
from agent.settings import load_settings
from agent.usage.tokens import UNKNOWN
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply

QUESTION = "How many vacation days do I get?"


def without_usage(text: str):
    """A responder for a server that reports no usage for this call, streamed or not."""

    def respond(body: dict):
        if body.get("stream"):
            body.pop("stream_options", None)  # include_usage not honoured: no usage chunk
            return Reply(text)
        return ("json", 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
        })

    return respond


class ListRetriever:
    def __init__(self, documents: list[Document]) -> None:
        self.documents = documents

    def invoke(self, query: str, k: int = 5, **kwargs) -> list[Document]:
        return self.documents[:k]


PTO = [Document(page_content="Full-time employees get 23 vacation days.",
                metadata={"source": "hr/pto.md", "title": "PTO", "score": 0.9})]


def test_chat_turn_with_one_unreported_call_is_unknown(databricks: DatabricksStub) -> None:
    chat = build_chat(load_settings(), retriever=ListRetriever(PTO), checkpointer=InMemorySaver())
    databricks.enqueue(Reply("23 days [1].", usage={"prompt_tokens": 50, "completion_tokens": 5}))
    first = run_chat_turn(chat, "vacation days?", thread_id="t")
    assert first.usage == {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55, "reported": True}
    # the follow-up: the rewrite reports usage, the answer does not
    databricks.enqueue(Reply("vacation days after five years", usage={"prompt_tokens": 30, "completion_tokens": 6}),
                       without_usage("25 days [1]."))
    second = run_chat_turn(chat, "and after five years?", thread_id="t")
    assert len(databricks.chat_requests()) == 3 and second.text == "25 days [1]."
    assert second.usage == UNKNOWN


def test_assistant_with_one_unreported_call_is_unknown(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(
        Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days"}, "id": "call_1"}],
              usage={"prompt_tokens": 80, "completion_tokens": 9}),
        without_usage("Full-time employees get 23 vacation days per year [1]."),
    )
    result = run_assistant(build_assistant(load_settings()), QUESTION)
    assert result.text.startswith("Full-time employees get 23") and len(databricks.chat_requests()) == 2
    assert result.usage == UNKNOWN

    databricks.reset()
    databricks.enqueue(
        Reply("", tool_calls=[{"name": "calculate", "arguments": {"expression": "23 * 8"}, "id": "call_2"}],
              usage={"prompt_tokens": 80, "completion_tokens": 9}),
        Reply("184 hours.", usage={"prompt_tokens": 120, "completion_tokens": 4}),
    )
    counted = run_assistant(build_assistant(load_settings()), "23 days in hours?")
    assert counted.usage == {"prompt_tokens": 200, "completion_tokens": 13, "total_tokens": 213, "reported": True}


def test_eval_answers_with_an_unreported_judge_call_is_unknown(indexed: Path, databricks: DatabricksStub) -> None:
    question = GoldQuestion(id="pto", question=QUESTION, sources=("hr/pto.md",), answer="23 days")
    verdict = json.dumps({"verdict": "correct", "grounded": True, "declined": False, "reason": "ok"})
    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 400, "completion_tokens": 8}),
                       without_usage(verdict))
    report = evaluate_answers(load_settings(), [question], mode="dense")
    assert len(databricks.chat_requests()) == 2 and report["questions"][0]["verdict"] == "correct"
    assert report["usage"] == UNKNOWN

    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 400, "completion_tokens": 8}),
                       Reply(verdict, usage={"prompt_tokens": 300, "completion_tokens": 20}))
    counted = evaluate_answers(load_settings(), [question], mode="dense")
    assert counted["usage"] == {"prompt_tokens": 700, "completion_tokens": 28, "total_tokens": 728, "reported": True}


@pytest.mark.parametrize("path", ["no model configured", "refused"])
def test_ask_json_without_a_model_call_has_the_usual_usage_shape(
    path: str, indexed: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, kb: KbRunner
) -> None:
    if path == "refused":
        databricks = request.getfixturevalue("databricks")
        monkeypatch.setenv("KB_MIN_RELEVANCE", "0.99")
    data = json.loads(kb("ask", QUESTION, "--json").stdout)
    assert (data.get("refused") is True) == (path == "refused")
    assert data["usage"] == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "reported": False}
    if path == "refused":
        assert databricks.chat_requests() == []
