"""The ledger keeps one SQLite connection per process: recording a call must not reopen the
database (closing the last connection checkpoints the WAL: milliseconds per model call), yet stay
right across threads, forks, a removed file, and many ledgers in one process."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.usage import ledger as ledger_module
from agent.usage.ledger import Ledger, open_ledger
from agent.settings import load_settings

ROW = {"kind": "chat", "endpoint": "e", "command": "ask", "usage_context": {"command": "ask"},
       "prompt_tokens": 1, "completion_tokens": 2, "latency_ms": 3.0, "status": "ok"}


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sqlite3.connect the ledger makes (writes and reads)."""
    opened: list[str] = []
    real = sqlite3.connect

    def counting(database, *args, **kwargs):
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", counting)
    return opened


def test_recording_many_calls_opens_the_database_once(tmp_path: Path, connects: list[str]) -> None:
    ledger = Ledger(tmp_path / "usage.sqlite")
    for n in range(20):
        assert ledger.record(**{**ROW, "endpoint": f"e{n}"})
    assert len(connects) == 1
    rows = ledger.rows()
    assert [r["endpoint"] for r in rows] == [f"e{n}" for n in range(20)]
    assert sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_removed_ledger_file_is_created_again(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledgers" / "usage.sqlite")
    assert ledger.record(**ROW)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger.path}{suffix}").unlink(missing_ok=True)
    assert ledger.record(**{**ROW, "endpoint": "after"})
    assert [r["endpoint"] for r in ledger.rows()] == ["after"]


def test_one_ledger_shared_by_threads_loses_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "usage.sqlite")
    failures: list[int] = []

    def write(worker: int) -> None:
        for n in range(50):
            if not ledger.record(**{**ROW, "endpoint": f"w{worker}", "prompt_tokens": n}):
                failures.append(worker)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    rows = ledger.rows()
    assert len(rows) == 400 and {r["endpoint"] for r in rows} == {f"w{w}" for w in range(8)}


def _record_in_child(ledger: Ledger) -> None:
    assert ledger.record(**{**ROW, "endpoint": "child"})


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ledger = Ledger(tmp_path / "usage.sqlite")
    assert ledger.record(**{**ROW, "endpoint": "parent-before"})
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(ledger,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert ledger.record(**{**ROW, "endpoint": "parent-after"})
    assert [r["endpoint"] for r in ledger.rows()] == ["parent-before", "child", "parent-after"]


def test_many_ledgers_in_one_process_keep_few_files_open(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledgers = []
    for n in range(ledger_module.MAX_OPEN + 3):
        monkeypatch.setenv("KB_USAGE_LEDGER", str(env / f"ledger-{n}.sqlite"))
        ledger = open_ledger(load_settings())
        assert ledger is not None and ledger.record(**ROW)
        ledgers.append(ledger)
    assert sum(ledger._connection is not None for ledger in ledgers) <= ledger_module.MAX_OPEN
    assert ledgers[0]._connection is None  # the oldest was closed ...
    assert ledgers[0].record(**ROW) and len(ledgers[0].rows()) == 2  # ... and reopens when used again
