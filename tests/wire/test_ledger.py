"""The usage ledger: rows for every chat and embeddings call, concurrency, privacy."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent.usage.ledger import CallRecorder, Ledger, ledger_path, open_ledger
from agent.databricks.llm import build_llm
from agent.settings import load_settings
from tests.conftest import CANARY, KbRunner
from tests.databricks_stub import DatabricksStub, Error, Reply

SECRET_PROMPT = "ZEBRA-QUOKKA-7781 what is the PTO policy"  # must never reach the ledger


def _rows(path: Path) -> list[dict]:
    return Ledger(path).rows()


def _all_bytes(path: Path) -> bytes:
    """The database and its WAL side files, as stored on disk."""
    data = b""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if candidate.exists():
            data += candidate.read_bytes()
    return data


# ---------------------------------------------------------------- the store


def test_ledger_path_defaults_to_index_dir_and_can_be_moved_or_turned_off(env: Path, monkeypatch) -> None:
    settings = load_settings()
    assert ledger_path(settings) == settings.index_dir / "usage.sqlite"
    monkeypatch.setenv("KB_USAGE_LEDGER", str(env / "elsewhere.sqlite"))
    assert ledger_path(load_settings()) == env / "elsewhere.sqlite"
    monkeypatch.setenv("KB_USAGE_LEDGER", "off")
    assert ledger_path(load_settings()) is None and open_ledger(load_settings()) is None


def test_rows_round_trip_with_wal_journal(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "sub" / "usage.sqlite")
    assert ledger.rows() == []  # no file yet: nothing, no error
    assert ledger.record(kind="chat", endpoint="e", command="ask", usage_context={"command": "ask"},
                         prompt_tokens=3, completion_tokens=4, latency_ms=12.5, status="ok")
    [row] = ledger.rows()
    assert (row["kind"], row["endpoint"], row["command"], row["prompt_tokens"], row["completion_tokens"]) == (
        "chat", "e", "ask", 3, 4)
    assert json.loads(row["usage_context"]) == {"command": "ask"}
    assert row["ts"].endswith("Z") and row["caller"] is None
    mode = sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _write_rows(path: str, worker: int, count: int) -> None:
    ledger = Ledger(Path(path))
    for i in range(count):
        assert ledger.record(kind="chat", endpoint=f"w{worker}", command="ask", usage_context={},
                             prompt_tokens=i, completion_tokens=1, latency_ms=1.0, status="ok")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    threads = [threading.Thread(target=_write_rows, args=(str(path), n, 40)) for n in range(4)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_rows, args=(str(path), 10 + n, 40)) for n in range(3)]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(60)
    assert all(p.exitcode == 0 for p in processes)
    rows = _rows(path)
    assert len(rows) == 7 * 40
    assert {r["endpoint"] for r in rows} == {f"w{n}" for n in (0, 1, 2, 3, 10, 11, 12)}


def test_unwritable_ledger_warns_once_and_never_fails(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ledger = Ledger(blocker / "usage.sqlite")
    with caplog.at_level("WARNING", logger="kb.usage"):
        for _ in range(3):
            assert ledger.record(kind="chat", endpoint="e", command="ask", usage_context={},
                                 latency_ms=1.0, status="ok") is False
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1


# ---------------------------------------------------------------- the callback, with a fake model


def test_recorder_rows_for_success_unreported_usage_and_error(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "usage.sqlite")
    recorder = CallRecorder(ledger, endpoint="fake", command="eval", usage_context={"command": "eval", "caller": "ci"})
    reported = AIMessage("ok", usage_metadata={"input_tokens": 11, "output_tokens": 2, "total_tokens": 13})
    model = GenericFakeChatModel(messages=iter([reported, AIMessage("no usage")]), callbacks=[recorder])
    model.invoke("q1")
    model.invoke("q2")
    with pytest.raises(StopIteration):
        model.invoke("q3")  # the fake has no more answers: a failed call
    first, second, third = _rows(ledger.path)
    assert (first["prompt_tokens"], first["completion_tokens"], first["status"]) == (11, 2, "ok")
    assert (second["prompt_tokens"], second["completion_tokens"], second["status"]) == (None, None, "ok")
    assert (third["status"], third["error"]) == ("error", "StopIteration")
    assert {r["caller"] for r in (first, second, third)} == {"ci"}
    assert all(r["latency_ms"] >= 0 for r in (first, second, third))


# ---------------------------------------------------------------- on the wire


def test_chat_calls_recorded_once_with_streamed_cumulative_usage(databricks: DatabricksStub) -> None:
    settings = load_settings()
    databricks.enqueue(
        Reply("one two three four five six", chunk_size=4, cumulative_usage=True,
              usage={"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}),
        Reply("plain", usage={"prompt_tokens": 5, "completion_tokens": 1}),
    )
    llm = build_llm(settings, command="agent", usage_extra={"caller": "bob"})
    assert "".join(c.content for c in llm.stream(SECRET_PROMPT)) == "one two three four five six"
    llm.invoke(SECRET_PROMPT)
    rows = _rows(ledger_path(settings))
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(30, 6), (5, 1)]
    assert rows[0]["first_token_ms"] is not None and rows[1]["first_token_ms"] is None
    assert {(r["command"], r["caller"], r["endpoint"], r["kind"]) for r in rows} == {
        ("agent", "bob", settings.chat_endpoint, "chat")}
    sent = [body["usage_context"] for body in databricks.chat_requests()]
    assert [json.loads(r["usage_context"]) for r in rows] == sent


def test_failed_call_is_recorded_as_error(databricks: DatabricksStub, monkeypatch) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    settings = load_settings()
    databricks.enqueue(Error(429, "REQUEST_LIMIT_EXCEEDED", "slow down"))
    with pytest.raises(Exception):
        build_llm(settings, command="ask").invoke("hi")
    [row] = _rows(ledger_path(settings))
    assert (row["status"], row["prompt_tokens"]) == ("error", None)
    assert "RateLimitError" in row["error"] and row["error"].endswith("(429)")  # type and status, no message
    assert "slow down" not in row["error"]


def test_ask_records_a_row_and_stores_no_prompt_or_token(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 321, "completion_tokens": 9}))
    question = f"How many vacation days do I get? {SECRET_PROMPT}"
    result = kb("ask", question, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["usage"] == {
        "prompt_tokens": 321, "completion_tokens": 9, "total_tokens": 330, "reported": True}
    path = ledger_path(load_settings())
    [row] = _rows(path)
    assert (row["command"], row["kind"], row["prompt_tokens"], row["completion_tokens"], row["status"]) == (
        "ask", "chat", 321, 9, "ok")
    stored = _all_bytes(path)
    assert b"ZEBRA-QUOKKA" not in stored and b"vacation" not in stored
    assert CANARY.encode() not in stored
    assert not list(path.parent.glob("*.sqlite-journal"))


def test_ingest_with_databricks_embeddings_records_each_request(
    databricks: DatabricksStub, corpus: Path, monkeypatch, kb: KbRunner
) -> None:
    monkeypatch.setenv("KB_EMBEDDINGS", "databricks")
    monkeypatch.setenv("KB_USAGE_CONTEXT", json.dumps({"team": "platform"}))
    result = kb("ingest", str(corpus), "--json")
    assert result.exit_code == 0, result.stderr
    requests = databricks.embedding_requests()
    assert requests and all(b["usage_context"] == {"team": "platform", "command": "ingest"} for b in requests)
    path = ledger_path(load_settings())
    rows = _rows(path)
    assert len(rows) == len(requests)
    assert {(r["kind"], r["command"], r["endpoint"], r["status"]) for r in rows} == {
        ("embeddings", "ingest", "databricks-gte-large-en", "ok")}
    assert sum(r["prompt_tokens"] for r in rows) > 0
    stored = _all_bytes(path)
    assert CANARY.encode() not in stored and b"vacation" not in stored  # chunk text stays out


def test_ledger_off_writes_nothing(databricks: DatabricksStub, monkeypatch, env: Path) -> None:
    monkeypatch.setenv("KB_USAGE_LEDGER", "off")
    databricks.enqueue(Reply("hi"))
    build_llm(load_settings(), command="ask").invoke("x")
    assert not any(p.suffix == ".sqlite" for p in env.parent.rglob("*"))
