"""Token accounting: exact when reported (streaming, cumulative usage), "unknown" otherwise."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from typer.testing import CliRunner

from agent.cli.app import app
from agent.databricks.llm import build_llm
from agent.settings import load_settings
from agent.usage.tokens import UNKNOWN, collect_usage
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply

runner = CliRunner()
QUESTION = "How many vacation days do I get?"


def _fake(*messages: AIMessage) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(messages))


def _with_usage(text: str, prompt: int, completion: int) -> AIMessage:
    return AIMessage(text, usage_metadata={"input_tokens": prompt, "output_tokens": completion,
                                           "total_tokens": prompt + completion})


def test_collector_sums_calls_and_nested_blocks_count_for_both() -> None:
    model = _fake(_with_usage("a", 10, 2), _with_usage("b", 5, 1))
    with collect_usage() as outer:
        model.invoke("1")
        with collect_usage() as inner:
            model.invoke("2")
    assert inner.totals() == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "reported": True}
    assert outer.totals() == {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18, "reported": True}


def test_one_unreported_call_makes_the_total_unknown_not_short() -> None:
    model = _fake(_with_usage("a", 10, 2), AIMessage("no usage"))
    with collect_usage() as usage:
        model.invoke("1")
        model.invoke("2")
    assert usage.totals() == UNKNOWN
    assert usage.totals() == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "reported": False}
    with collect_usage() as nothing:
        pass
    assert nothing.totals()["reported"] is False


def test_stream_with_cumulative_usage_is_counted_once(databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("a b c d e f g h", chunk_size=2, cumulative_usage=True,
                             usage={"prompt_tokens": 40, "completion_tokens": 8}))
    with collect_usage() as usage:
        list(build_llm(load_settings()).stream("q"))
    assert usage.totals() == {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48, "reported": True}
    assert databricks.chat_requests()[0]["stream_options"] == {"include_usage": True}


def _no_usage_completion(body: dict):
    return ("json", 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "23 days [1]."},
                     "finish_reason": "stop", "logprobs": None}],
    })


def _stream_ignoring_include_usage(body: dict) -> Reply:
    body.pop("stream_options", None)  # a server that does not honour include_usage
    return Reply("23 days [1].")


def test_server_without_usage_is_unknown_non_streamed(databricks: DatabricksStub) -> None:
    databricks.enqueue(_no_usage_completion)
    with collect_usage() as usage:
        assert build_llm(load_settings()).invoke("q").content == "23 days [1]."
    assert usage.totals() == UNKNOWN


def test_ask_json_reports_unknown_when_the_stream_has_no_usage(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(_stream_ignoring_include_usage)
    result = runner.invoke(app, ["ask", QUESTION, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"] == "23 days [1]."
    assert data["usage"] == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "reported": False}


def test_ask_json_counts_cumulative_stream_usage_once(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1].", chunk_size=3, cumulative_usage=True,
                             usage={"prompt_tokens": 512, "completion_tokens": 7}))
    result = runner.invoke(app, ["ask", QUESTION, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["usage"] == {
        "prompt_tokens": 512, "completion_tokens": 7, "total_tokens": 519, "reported": True}


def test_verbose_shows_tokens_and_latency_per_call(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 77, "completion_tokens": 8}))
    result = runner.invoke(app, ["--verbose", "ask", QUESTION])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "kb.usage" in line]
    assert len(lines) == 1, result.stderr
    assert "chat call to databricks-meta-llama-3-3-70b-instruct (ask): 77 prompt + 8 completion tokens" in lines[0]
    assert " ms, ok" in lines[0]
    assert CANARY not in result.stdout + result.stderr
    quiet = runner.invoke(app, ["ask", QUESTION])
    assert "kb.usage" not in quiet.stderr
