"""The usage ledger's schema is versioned: old ledgers are upgraded in place with their rows, a ledger
from a newer kb is neither written to nor misread."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from agent.usage import ledger as ledger_module
from agent.errors import KbError
from agent.usage.ledger import COLUMNS, MIGRATIONS, SCHEMA_VERSION, Ledger, LedgerVersionError, migrate, schema_version

ROW = {"kind": "chat", "endpoint": "e", "command": "ask", "usage_context": {"command": "ask"},
       "prompt_tokens": 1, "completion_tokens": 2, "latency_ms": 3.0, "status": "ok"}

# The schema every ledger written before versioning has (the code's only schema until then), by hand.
UNVERSIONED = """
CREATE TABLE calls (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, endpoint TEXT NOT NULL,
    command TEXT NOT NULL, caller TEXT, usage_context TEXT NOT NULL, prompt_tokens INTEGER,
    completion_tokens INTEGER, latency_ms REAL NOT NULL, first_token_ms REAL, status TEXT NOT NULL,
    error TEXT
);
CREATE INDEX calls_ts ON calls (ts);
INSERT INTO calls (ts, kind, endpoint, command, caller, usage_context, prompt_tokens, completion_tokens,
                   latency_ms, first_token_ms, status, error)
VALUES ('2025-01-31T12:00:00.000000Z', 'chat', 'old-endpoint', 'ask', NULL, '{}', 10, 5, 120.5, NULL, 'ok', NULL),
       ('2025-02-01T08:30:00.000000Z', 'embeddings', 'emb', 'ingest', 'nb', '{"caller": "nb"}', 7, 0, 30.0,
        NULL, 'error', 'RateLimitError (429)');
"""


def _write(path: Path, script: str, version: int = 0) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(script)
    connection.execute(f"PRAGMA user_version = {version}")
    connection.commit()
    connection.close()


def _version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return schema_version(connection)
    finally:
        connection.close()


def test_a_new_ledger_is_created_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    assert Ledger(path).record(**ROW)
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    assert _version(path) == SCHEMA_VERSION


def test_an_unversioned_ledger_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    _write(path, UNVERSIONED)
    assert _version(path) == 0
    ledger = Ledger(path)
    assert [r["endpoint"] for r in ledger.rows()] == ["old-endpoint", "emb"]  # readable before any write
    assert ledger.record(**{**ROW, "endpoint": "new"})
    ledger.close()
    assert _version(path) == SCHEMA_VERSION
    rows = ledger.rows()
    assert [r["endpoint"] for r in rows] == ["old-endpoint", "emb", "new"]
    assert rows[1]["caller"] == "nb" and rows[1]["error"] == "RateLimitError (429)" and rows[1]["prompt_tokens"] == 7


def test_migrations_run_in_order_once_and_a_failed_step_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    def add_column(connection: sqlite3.Connection) -> None:
        ran.append(2)
        connection.execute("ALTER TABLE calls ADD COLUMN cached_tokens INTEGER")

    def broken(connection: sqlite3.Connection) -> None:
        ran.append(3)
        connection.execute("ALTER TABLE calls ADD COLUMN half_done INTEGER")
        raise sqlite3.OperationalError("step 3 failed")

    path = tmp_path / "usage.sqlite"
    _write(path, UNVERSIONED)
    connection = sqlite3.connect(path, isolation_level=None)
    monkeypatch.setattr(ledger_module, "MIGRATIONS", (*MIGRATIONS, add_column, broken))
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", len(MIGRATIONS) + 2)
    with pytest.raises(sqlite3.OperationalError, match="step 3 failed"):
        migrate(connection, path)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(calls)")}
    assert schema_version(connection) == 0 and "cached_tokens" not in columns and "half_done" not in columns

    monkeypatch.setattr(ledger_module, "MIGRATIONS", (*MIGRATIONS, add_column))
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    ran.clear()
    assert migrate(connection, path) == len(MIGRATIONS) + 1
    assert migrate(connection, path) == len(MIGRATIONS) + 1  # already there: nothing runs again
    assert ran == [2]
    assert connection.execute("SELECT count(*) FROM calls").fetchone()[0] == 2
    assert "cached_tokens" in {row[1] for row in connection.execute("PRAGMA table_info(calls)")}
    connection.close()


def test_rows_of_an_older_ledger_have_every_current_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "usage.sqlite"
    _write(path, UNVERSIONED.replace("first_token_ms REAL, ", "").replace("latency_ms, first_token_ms,", "latency_ms,")
           .replace("120.5, NULL,", "120.5,").replace("30.0,\n        NULL,", "30.0,"))
    [first, _] = Ledger(path).rows()
    assert set(COLUMNS) <= set(first) and first["first_token_ms"] is None and first["latency_ms"] == 120.5


def test_a_ledger_from_a_newer_kb_is_refused_not_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "usage.sqlite"
    _write(path, UNVERSIONED, version=SCHEMA_VERSION + 1)
    before = path.read_bytes()
    ledger = Ledger(path)
    with caplog.at_level(logging.WARNING, logger="kb.usage"):
        assert ledger.record(**ROW) is False
        assert ledger.record(**ROW) is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"schema version {SCHEMA_VERSION + 1}" in warnings[0]
    assert "newer kb" in warnings[0] and "\n" not in warnings[0]
    with pytest.raises(LedgerVersionError) as refused:
        ledger.rows()
    assert isinstance(refused.value, KbError) and "upgrade kb" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert path.read_bytes() == before and _version(path) == SCHEMA_VERSION + 1


def test_kb_usage_refuses_a_newer_ledger_with_one_line(tmp_path: Path, env: Path, kb, monkeypatch) -> None:
    path = tmp_path / "usage.sqlite"
    _write(path, UNVERSIONED, version=SCHEMA_VERSION + 1)
    monkeypatch.setenv("KB_USAGE_LEDGER", str(path))
    result = kb("usage", "--since", "all")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the usage ledger") and "newer kb" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
