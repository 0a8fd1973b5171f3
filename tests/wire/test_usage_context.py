"""usage_context: limits checked at settings load, automatic keys under the user's, on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.usage import context as usage_context
from agent.cli.app import app
from agent.errors import ConfigError
from agent.databricks.llm import build_llm, chat_usage_context
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply

runner = CliRunner()


def _set(monkeypatch, context: dict) -> None:
    monkeypatch.setenv("KB_USAGE_CONTEXT", json.dumps(context))


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({f"k{i}": "v" for i in range(31)}, "has 31 keys; at most 30"),
        ({"x" * 65: "v"}, "must be 1-64 characters"),
        ({"": "v"}, "must be 1-64 characters"),
        ({"team": "v" * 257}, "value of 'team' is 257 characters; at most 256"),
        ({"team": "a\nb"}, "value of 'team' contains a control character"),
        ({"team": 7}, "value of 'team' must be a string, got int"),
        ({f"key{i:02d}": "v" * 200 for i in range(20)}, "bytes as JSON; at most 3584"),
    ],
)
def test_limits_fail_at_load_naming_the_variable(env: Path, monkeypatch, context, fragment) -> None:
    _set(monkeypatch, context)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("invalid KB_USAGE_CONTEXT: ")
    assert fragment in str(info.value)


def test_limit_error_is_one_line_in_the_cli(env: Path, monkeypatch) -> None:
    _set(monkeypatch, {f"k{i}": "v" for i in range(40)})
    result = runner.invoke(app, ["search", "x"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid KB_USAGE_CONTEXT: has 40 keys; at most 30 are allowed (kb adds command and caller; "
        "Databricks gets at most 32)"
    ]


def test_the_largest_allowed_context_still_fits_with_automatic_keys(env: Path, monkeypatch) -> None:
    context = {f"k{i:02d}": "v" * 100 for i in range(30)}
    while usage_context.size_bytes(context) > usage_context.MAX_USER_BYTES:
        context.popitem()
    _set(monkeypatch, context)
    settings = load_settings()
    built = chat_usage_context(settings, "serve", {"caller": "c" * 500})
    assert built["command"] == "serve" and built["caller"] == "c" * usage_context.MAX_AUTOMATIC_VALUE_CHARS
    assert len(built) <= usage_context.MAX_KEYS
    assert usage_context.size_bytes(built) <= usage_context.MAX_TOTAL_BYTES


def test_automatic_values_are_strings_and_clipped_user_keys_win(env: Path, monkeypatch) -> None:
    _set(monkeypatch, {"caller": "batch-job", "team": "risk"})
    built = chat_usage_context(load_settings(), "serve", {"caller": "alice", "request": 42, "note": "a\x00b", "none": None})
    assert built == {"caller": "batch-job", "team": "risk", "command": "serve", "request": "42", "note": "a b"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in built.items())


def test_automatic_keys_beyond_the_cap_are_dropped_never_the_users(env: Path, monkeypatch) -> None:
    _set(monkeypatch, {f"k{i}": "v" for i in range(30)})
    built = chat_usage_context(load_settings(), "ask", {"caller": "x", "extra1": "y", "extra2": "z"})
    assert len(built) == usage_context.MAX_KEYS
    assert all(f"k{i}" in built for i in range(30))
    assert built["command"] == "ask" and built["caller"] == "x"


# ---------------------------------------------------------------- on the wire


def test_chat_and_embeddings_carry_the_same_context(databricks: DatabricksStub, monkeypatch) -> None:
    from agent.rag.retrieval import build_embeddings

    _set(monkeypatch, {"team": "fraud", "cost_center": "cc-12"})
    monkeypatch.setenv("KB_EMBEDDINGS", "databricks")
    settings = load_settings()
    databricks.enqueue(Reply("ok"))
    build_llm(settings, command="serve", usage_extra={"caller": "svc-a"}).invoke("hi")
    build_embeddings(settings, command="serve", usage_extra={"caller": "svc-a"}).embed_query("hello")
    expected = {"team": "fraud", "cost_center": "cc-12", "command": "serve", "caller": "svc-a"}
    assert databricks.chat_requests()[0]["usage_context"] == expected
    assert databricks.embedding_requests()[0]["usage_context"] == expected


def test_ask_sends_command_ask_on_every_request(indexed: Path, databricks: DatabricksStub, monkeypatch) -> None:
    _set(monkeypatch, {"team": "hr-bot"})
    databricks.enqueue(Reply("23 days [1]."))
    result = runner.invoke(app, ["ask", "How many vacation days do I get?", "--json"])
    assert result.exit_code == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    bodies = [r.body for r in databricks.requests]
    assert bodies and all(b["usage_context"] == {"team": "hr-bot", "command": "ask"} for b in bodies)
