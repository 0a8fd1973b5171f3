"""``kb usage``: the ledger summed by command, endpoint, caller or day."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.usage.ledger import Ledger, iso_utc, ledger_path
from agent.settings import load_settings
from agent.usage.report import parse_since, percentile
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply

NOW = datetime.now(timezone.utc)


@pytest.fixture
def kb(kb: KbRunner) -> KbRunner:
    """The shared runner, with a wide terminal for the tables."""
    return kb.with_env(COLUMNS="160")


def _row(ledger: Ledger, *, ago: timedelta, command: str = "ask", endpoint: str = "llm", caller: str | None = None,
         prompt: int | None = 100, completion: int | None = 10, latency: float = 100.0, status: str = "ok") -> None:
    context = {"command": command, **({"caller": caller} if caller else {})}
    ledger.record(ts=iso_utc(NOW - ago), kind="chat", endpoint=endpoint, command=command, caller=caller,
                  usage_context=context, prompt_tokens=prompt,
                  completion_tokens=completion, latency_ms=latency, status=status)


@pytest.fixture
def ledger(env: Path) -> Ledger:
    ledger = Ledger(ledger_path(load_settings()))
    for i, latency in enumerate([100, 200, 300, 400, 1500]):
        _row(ledger, ago=timedelta(hours=1 + i), command="ask", latency=latency)
    _row(ledger, ago=timedelta(hours=2), command="serve", caller="alice", prompt=50, completion=5, latency=80)
    _row(ledger, ago=timedelta(hours=3), command="serve", caller="bob", prompt=None, completion=None, latency=90)
    _row(ledger, ago=timedelta(hours=3), command="serve", caller="bob", status="error", prompt=None, completion=None)
    _row(ledger, ago=timedelta(hours=4), command="ingest", endpoint="embed", prompt=1000, completion=0, latency=50)
    _row(ledger, ago=timedelta(days=10), command="eval", prompt=9999, completion=9999)  # older than 7d
    return ledger


def test_json_by_command_defaults_to_last_7_days(ledger: Ledger, kb: KbRunner) -> None:
    result = kb("usage", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["by"] == "command" and data["ledger"] == str(ledger.path)
    groups = {g["key"]: g for g in data["groups"]}
    assert list(groups) == ["ask", "serve", "ingest"]  # most requests first; eval is older than 7 days
    ask = groups["ask"]
    assert (ask["requests"], ask["errors"], ask["prompt_tokens"], ask["completion_tokens"], ask["total_tokens"]) == (
        5, 0, 500, 50, 550)
    assert ask["latency_ms"] == {"p50": 300.0, "p95": 1500.0}
    serve = groups["serve"]
    assert (serve["requests"], serve["errors"], serve["unreported"], serve["prompt_tokens"]) == (3, 1, 2, 50)
    total = data["total"]
    assert (total["requests"], total["prompt_tokens"], total["unreported"]) == (9, 1550, 2)


def test_since_all_and_spans(ledger: Ledger, kb: KbRunner) -> None:
    everything = json.loads(kb("usage", "--since", "all", "--json").stdout)
    assert everything["since"] is None and everything["total"]["requests"] == 10
    recent = json.loads(kb("usage", "--since", "150m", "--json").stdout)
    assert recent["total"]["requests"] == 3  # ask 1 h and 2 h ago, serve 2 h ago


@pytest.mark.parametrize(("by", "keys"), [
    ("caller", {"-", "alice", "bob"}),
    ("endpoint", {"llm", "embed"}),
])
def test_group_by(ledger: Ledger, by: str, keys: set, kb: KbRunner) -> None:
    data = json.loads(kb("usage", "--by", by, "--json").stdout)
    assert {g["key"] for g in data["groups"]} == keys
    assert sum(g["requests"] for g in data["groups"]) == data["total"]["requests"] == 9


def test_by_day_is_in_order(ledger: Ledger, kb: KbRunner) -> None:
    data = json.loads(kb("usage", "--by", "day", "--since", "all", "--json").stdout)
    days = [g["key"] for g in data["groups"]]
    assert days == sorted(days) and len(days) >= 2
    assert days[0] == (NOW - timedelta(days=10)).astimezone().strftime("%Y-%m-%d")


def test_table_output(ledger: Ledger, kb: KbRunner) -> None:
    result = kb("usage")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for fragment in ("kb usage by command", "requests", "prompt", "completion", "tokens", "latency", "p50", "p95",
                     "ask", "serve", "ingest", "total", "1.5 s", "300 ms"):
        assert fragment in text, text
    assert "2 call(s) did not report token usage" in text
    assert "eval" not in text


def test_empty_ledger_and_bad_options(env: Path, kb: KbRunner) -> None:
    empty = kb("usage")
    assert empty.exit_code == 0 and "no model calls recorded since 7d in" in empty.stdout
    assert json.loads(kb("usage", "--json").stdout)["groups"] == []
    bad_by = kb("usage", "--by", "team")
    assert bad_by.exit_code != 0 and "error: invalid --by 'team': use one of command, endpoint, caller, day" in bad_by.stderr
    bad_since = kb("usage", "--since", "yesterday")
    assert bad_since.exit_code != 0 and "error: invalid --since 'yesterday'" in bad_since.stderr


def test_usage_after_real_calls(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("23 days [1].", usage={"prompt_tokens": 200, "completion_tokens": 4}))
    assert kb("ask", "How many vacation days do I get?").exit_code == 0
    data = json.loads(kb("usage", "--json").stdout)
    [group] = data["groups"]
    assert (group["key"], group["requests"], group["prompt_tokens"], group["completion_tokens"]) == ("ask", 1, 200, 4)


def test_parse_since_and_percentile() -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=timezone.utc)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2w", now=now) == now - timedelta(weeks=2)
    assert parse_since("24h", now=now) == now - timedelta(hours=24)
    assert parse_since("all") is None
    assert parse_since("2025-03-01T00:00:00+00:00") == datetime(2025, 3, 1, tzinfo=timezone.utc)
    with pytest.raises(UsageError):
        parse_since("last week")
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert percentile([float(v) for v in range(1, 101)], 50) == 50.0


def test_unreadable_ledger_is_one_error_line(env: Path, kb: KbRunner) -> None:
    path = ledger_path(load_settings())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a sqlite database, just bytes" * 100)
    result = kb("usage")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot read the usage ledger {path}")
    assert len(result.stderr.strip().splitlines()) == 1
