"""The terminal at 80 columns (issue 16, Terminal): status line until the first token, agent tool
results labelled and in call order, citations that match nothing named, ``kb usage`` and ``--help``
readable in 80 columns, ``kb ingest`` errors (absolute paths, no empty index left), ``kb eval`` with
unreadable judge replies, ``kb serve`` on a busy port."""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from agent.cli.repl import AgentPrinter, Terminal, sources_lines
from agent.cli.status import Status
from agent.settings import load_settings
from agent.usage.ledger import Ledger, iso_utc, ledger_path
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply
from tests.pty_run import run_with_terminal_stderr

ESC = "\x1b"


@pytest.fixture
def kb(kb: KbRunner) -> KbRunner:
    return kb.with_env(COLUMNS="80")


def _lines_fit(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"


# ---------------------------------------------------------------- status line


HOOKED_KB = r'''
import sys, importlib.abc
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("langchain_core", "chromadb"):
            sys.stderr.write(f"<<IMPORT {name}>>"); sys.stderr.flush()
        return None
sys.meta_path.insert(0, Hook())
from agent.cli.app import main
sys.argv = ["kb"] + sys.argv[1:]
main()
'''


def _run_with_terminal_stderr(args: list[str], timeout: float = 120) -> tuple[str, str, int]:
    """``kb ARGS`` with stderr on a pseudo-terminal (as in a shell) and stdout piped; each first
    import of LangChain or Chroma is marked in stderr."""
    return run_with_terminal_stderr([sys.executable, "-c", HOOKED_KB, *args], timeout=timeout,
                                    env={**os.environ, "COLUMNS": "80", "TERM": "xterm"})


def test_ask_shows_a_status_line_on_a_terminal_before_the_heavy_imports(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("Full-time employees get 23 vacation days [1].", delay=0.5))
    terminal, stdout, code = _run_with_terminal_stderr(["ask", "How many vacation days do I get?"])
    assert code == 0, terminal[-2000:]
    first_status = terminal.find("searching…")
    assert first_status >= 0, terminal[-2000:]
    assert first_status < terminal.find("<<IMPORT langchain_core>>"), terminal[:2000]  # the first sign of life
    assert "writing…" in terminal
    assert stdout.startswith("Full-time employees get 23 vacation days [1].") and ESC not in stdout
    assert "Sources" in stdout and "searching" not in stdout


def test_piped_ask_prints_nothing_extra(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("Full-time employees get 23 vacation days [1]."))
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 0 and result.stderr == ""
    assert "searching" not in result.stdout and ESC not in result.stdout


def test_status_is_drawn_only_on_a_terminal() -> None:
    piped = Console(file=io.StringIO(), width=80)
    status = Status(piped)
    status.show("searching…")
    status.stop()
    assert piped.file.getvalue() == "" and not status.showing

    tty = Console(file=io.StringIO(), width=80, force_terminal=True)
    status = Status(tty)
    status.show("searching…")
    assert status.showing
    status.show("writing…")
    status.stop()
    drawn = tty.file.getvalue()
    assert "searching…" in drawn and "writing…" in drawn and not status.showing
    assert Status(tty, enabled=False).enabled is False


# ---------------------------------------------------------------- kb agent


def _term() -> tuple[Terminal, Console]:
    out = Console(file=io.StringIO(), width=80, emoji=False, highlight=False)
    err = Console(file=io.StringIO(), width=80, emoji=False, highlight=False)
    return Terminal(out, err, interactive=False), err


def test_parallel_results_are_labelled_and_printed_in_call_order() -> None:
    term, err = _term()
    printer = AgentPrinter(term)
    printer({"type": "tool_call", "id": "a", "name": "search_knowledge", "args": {"query": "pto"}, "of": 3})
    printer({"type": "tool_call", "id": "b", "name": "calculate", "args": {"expression": "23 * 8"}, "of": 3})
    printer({"type": "tool_call", "id": "c", "name": "read_document", "args": {"source": "hr/pto.md"}, "of": 3})
    printer({"type": "tool_result", "id": "c", "name": "read_document", "summary": "[1] hr/pto.md (441 characters)"})
    assert "←" not in err.file.getvalue()  # held back: #1 and #2 have not finished
    printer({"type": "tool_result", "id": "a", "name": "search_knowledge", "summary": "2 passages: [2], [3]"})
    printer({"type": "tool_result", "id": "b", "name": "calculate", "summary": "23 * 8 = 184", "error": False})
    lines = [line for line in err.file.getvalue().splitlines() if line.strip()]
    assert lines == [
        "→ #1 search_knowledge(query='pto')",
        "→ #2 calculate(expression='23 * 8')",
        "→ #3 read_document(source='hr/pto.md')",
        "  ← #1 search_knowledge: 2 passages: [2], [3]",
        "  ← #2 calculate: 23 * 8 = 184",
        "  ← #3 read_document: [1] hr/pto.md (441 characters)",
    ]


def test_a_single_call_is_labelled_with_its_tool_and_a_missing_result_does_not_hold_the_rest() -> None:
    term, err = _term()
    printer = AgentPrinter(term)
    printer({"type": "tool_call", "id": "x", "name": "list_documents", "args": {}, "of": 1})
    printer({"type": "tool_result", "id": "x", "name": "list_documents", "summary": "3 documents"})
    printer({"type": "tool_call", "id": "p", "name": "calculate", "args": {"expression": "1/0"}, "of": 2})
    printer({"type": "tool_call", "id": "q", "name": "calculate", "args": {"expression": "2+2"}, "of": 2})
    printer({"type": "tool_result", "id": "q", "name": "calculate", "summary": "2+2 = 4"})
    printer({"type": "stopped", "message": "step limit"})  # p never answered: q is still shown
    text = err.file.getvalue()
    assert "→ list_documents()" in text and "  ← list_documents: 3 documents" in text
    assert "  ← #2 calculate: 2+2 = 4" in text and "#1 calculate:" not in text


def test_citations_that_match_nothing_are_named() -> None:
    [_, note] = sources_lines([], "23 days [1].")
    assert note.plain == "(the answer cites [1], but no passage or document was retrieved under that number)"
    assert sources_lines([], "No citation here.")[1].plain == "(the answer cites no passage)"
    lines = sources_lines([{"n": 1, "source": "hr/pto.md", "title": "Time Off"}], "See [1] and [7].")
    assert lines[1] == "[bold]Sources[/]" and lines[2].plain == "  [1] hr/pto.md · Time Off"
    assert lines[3].plain == "  (also cites [7]: no passage or document was retrieved under that number)"


def test_kb_agent_answer_citing_an_unretrieved_number_says_so(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1]."))  # no tool call: nothing was retrieved
    result = kb("agent", "How many vacation days do I get?")
    assert result.exit_code == 0, result.stderr
    assert "(the answer cites no passage)" not in result.stdout
    assert "(the answer cites [1], but no passage or document was retrieved under that number)" in result.stdout


def test_kb_agent_parallel_results_on_the_wire(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(
        Reply("", tool_calls=[
            {"name": "search_knowledge", "arguments": {"query": "vacation"}, "id": "call_a"},
            {"name": "calculate", "arguments": {"expression": "23 * 8"}, "id": "call_b"},
            {"name": "read_document", "arguments": {"source": "hr/pto.md"}, "id": "call_c"},
        ]),
        Reply("23 days are 184 hours [1]."),
    )
    result = kb("agent", "How many hours of vacation is that?")
    assert result.exit_code == 0, result.stderr
    results = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("←")]
    assert [r.split(":")[0] for r in results] == ["← #1 search_knowledge", "← #2 calculate", "← #3 read_document"]
    assert "← #2 calculate: 23 * 8 = 184" in results
    assert "Sources" in result.stdout


# ---------------------------------------------------------------- kb usage at 80 columns


def test_usage_table_fits_80_columns(env: Path, kb: KbRunner) -> None:
    ledger = Ledger(ledger_path(load_settings()))
    now = datetime.now(timezone.utc)
    for i, endpoint in enumerate(["databricks-meta-llama-3-3-70b-instruct", "databricks-gte-large-en"]):
        for day in range(3):
            ledger.record(ts=iso_utc(now - timedelta(days=day, hours=i)), kind="chat", endpoint=endpoint,
                          command="ask", caller=None, usage_context={"command": "ask"}, prompt_tokens=1_234_567,
                          completion_tokens=987_654, latency_ms=12_345.0, status="ok")
    for by in ("command", "endpoint", "day"):
        result = kb("usage", "--by", by)
        assert result.exit_code == 0, result.stderr
        _lines_fit(result.stdout)
        assert "…" not in result.stdout, result.stdout  # no header or value cut
        for header in ("requests", "errors", "prompt", "completion", "tokens", "latency", "p50", "p95"):
            assert header in result.stdout
        assert "3,703,701" in result.stdout or "7,407,402" in result.stdout  # whole numbers
    days = kb("usage", "--by", "day").stdout
    assert (now - timedelta(days=2)).astimezone().strftime("%Y-%m-%d") in days  # a date on one line


# ---------------------------------------------------------------- --help


COMMANDS = ["ingest", "search", "ask", "chat", "agent", "serve", "eval", "usage", "doctor"]


def test_help_lists_every_command_whole(kb: KbRunner) -> None:
    result = kb("--help")
    assert result.exit_code == 0
    _lines_fit(result.stdout)
    assert "..." not in result.stdout.split("Commands:")[1]
    commands = result.stdout.split("Commands:")[1]
    assert "new and changed files are embedded," in commands and "deleted ones removed." in commands


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_readable_value_names_and_an_example(command: str, kb: KbRunner) -> None:
    result = kb(command, "--help")
    assert result.exit_code == 0
    text = result.stdout
    _lines_fit(text)
    shown = text.split("Examples:")[0].replace("{id, question, sources, answer}", "")
    for raw in ("<", "list[", "range>", "{"):
        assert raw not in shown, text
    assert "\nExamples:\n  kb " in text or "\nExamples:\n  KB_" in text


def test_help_value_names(kb: KbRunner) -> None:
    assert "Usage: kb ingest [OPTIONS] [PATH]...\n" in kb("ingest", "--help").stdout
    assert "  PATH...  Files or folders" in kb("ingest", "--help").stdout
    search = kb("search", "--help").stdout
    assert "Usage: kb search [OPTIONS] QUERY\n" in search and "  -k N " in search and "--mode MODE" in search
    assert "--fail-under METRIC=VALUE" in kb("eval", "--help").stdout


def test_help_examples_are_valid_command_lines() -> None:
    import typer.main

    from agent.cli.app import app
    from agent.cli.helpfmt import EXAMPLES

    group = typer.main.get_command(app)
    for name, lines in EXAMPLES.items():
        for line in lines:
            words = shlex.split(line.split("#")[0])
            words = words[words.index("kb") + 1:]
            parent = group.make_context("kb", list(words), resilient_parsing=False)
            command, rest = group, list(words)
            while hasattr(command, "commands") and rest and rest[0] in command.commands:
                command, rest = command.commands[rest[0]], rest[1:]
            assert command is not group, line
            command.make_context(command.name, rest, parent=parent)  # raises on an unknown option or bad value
            assert name in words, line


# ---------------------------------------------------------------- kb ingest


def test_ingest_of_a_missing_path_names_it_absolutely_and_creates_nothing(env: Path, monkeypatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_INDEX_DIR", ".kb")  # relative, as in a .env
    result = kb("ingest", "nothere")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: no such file or folder: {env / 'nothere'}"
    assert not (env / ".kb").exists()
    search = kb("search", "anything")
    assert search.exit_code == 3 and f"error: no index at {env / '.kb'}" in search.stderr


def test_ingest_of_an_empty_folder_prints_one_line(env: Path, kb: KbRunner) -> None:
    (env / "empty").mkdir()
    result = kb("ingest", "empty")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: no documents found in {env / 'empty'}"


# ---------------------------------------------------------------- kb eval --answers, unreadable judge


GOLD = [
    {"id": "pto", "question": "How many vacation days do full-time employees get?", "sources": ["hr/pto.md"],
     "answer": "23 vacation days per year."},
    {"id": "exp", "question": "Who approves expenses over 800 euros?", "sources": ["finance/expenses.pdf"],
     "answer": "The finance director, Dana Whitfield."},
]


def test_eval_with_unreadable_judge_replies_says_n_a_and_fails_its_floor(
    indexed: Path, databricks: DatabricksStub, tmp_path: Path, kb: KbRunner
) -> None:
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(r) for r in GOLD) + "\n", encoding="utf-8")

    def script() -> None:
        databricks.enqueue(Reply("You get 23 days [1]."), Reply("I think it is fine."),
                           Reply("Dana Whitfield approves them [1]."), Reply("```yaml\nverdict: correct\n```"))

    script()
    report = kb("eval", str(gold), "--mode", "hybrid", "--answers")
    assert report.exit_code == 0, report.stderr
    assert "2 judge repl(ies) could not be read (of 2)" in report.stdout
    assert "correct n/a, partially n/a, wrong n/a; answer score n/a; grounded n/a" in report.stdout
    # The answer lines (not the retrieval table's "refused 0.0%") must not pass n/a off as a zero.
    answer_lines = [line for line in report.stdout.splitlines() if "correct" in line or "answer score" in line]
    assert answer_lines and not any("0.0%" in line for line in answer_lines)
    assert "answer score 0.000" not in report.stdout

    script()
    data = json.loads(kb("eval", str(gold), "--mode", "hybrid", "--answers", "--json").stdout)
    metrics = data["answers"]["metrics"]
    assert metrics["correct"] is None and metrics["answer_score"] is None and metrics["unjudged"] == 2

    script()
    failed = kb("eval", str(gold), "--mode", "hybrid", "--answers", "--fail-under", "correct=0.5")
    assert failed.exit_code == 1
    assert "FAIL answers correct n/a (floor 0.500)" in failed.stdout
    assert failed.stderr.strip() == ("error: below --fail-under: answers correct = n/a (no judge reply could be "
                                     "read) < 0.500")


def test_answer_rates_leave_unreadable_replies_out() -> None:
    from agent.evaluation.evaluate import answer_metrics

    rows = [{"sources": ["a"], "verdict": "correct", "grounded": True}, {"sources": ["b"], "verdict": "unjudged"},
            {"sources": [], "declined": False, "unjudged": True}]
    metrics = answer_metrics(rows)
    assert (metrics["correct"], metrics["answer_score"], metrics["unjudged"]) == (1.0, 1.0, 2)
    assert metrics["declined"] is None and metrics["grounded"] == 1.0


# ---------------------------------------------------------------- kb serve


def test_serve_on_a_busy_port_is_one_error_line_before_the_banner(env: Path, kb: KbRunner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = kb("serve", "--port", str(port))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: port {port} is in use: pick another with --port"
    assert "kb serve:" not in result.stdout + result.stderr


def test_short_key_warning_and_docs_agree_on_32(env: Path, monkeypatch) -> None:
    from agent.api.server import SHORT_KEY, check_bind

    assert SHORT_KEY == 32
    monkeypatch.setenv("KB_API_KEYS", "notebooks:" + "k" * 31)
    [warning] = check_bind(load_settings(), "127.0.0.1", insecure=False)
    assert "use at least 32 random characters" in warning
    monkeypatch.setenv("KB_API_KEYS", "notebooks:" + "k" * 32)
    assert check_bind(load_settings(), "127.0.0.1", insecure=False) == []
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    assert "(32 random\n  characters or more each" in docs or "32 random characters" in " ".join(docs.split())
