"""Untrusted text reaches the terminal literally (issue 18, item 12).

Documents, titles, file names, model answers and tool output are printed as they are: ``root:x:0``
stays ``root:x:0`` (no ``:x:`` emoji), ``[bold]`` stays text, and escape sequences (colours, screen
clearing, OSC hyperlinks and titles, C1 controls, bidi overrides) never reach the terminal raw, on
every print path: search, explain, ask, chat, agent, the ingest summary and ``kb eval``/``kb usage``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from rich.console import Console

from agent.terminal import clean, literal, markup
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply

ESC = "\x1b"
HOSTILE = (
    "root:x:0:0:root:/root:/bin/bash :smile: and [bold]not bold[/bold] "
    f"{ESC}[31mred{ESC}[0m {ESC}[2J {ESC}]8;;http://evil.example/{ESC}\\click{ESC}]8;;{ESC}\\ "
    f"{ESC}]0;pwned title\x07 \u202eevil\u202c \x9b31m"
)
EVIL_NAME = f"{ESC}[31mevil{ESC}[0m :x: [bold]name.md"
FORBIDDEN = [ESC, "\x9b", "\u202e", "\x07", "❌", "😄"]


def assert_literal(text: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in text, f"{bad!r} reached the terminal:\n{text!r}"


# ---------------------------------------------------------------- the helper


def test_clean_strips_sequences_and_keeps_text() -> None:
    assert clean(HOSTILE) == ("root:x:0:0:root:/root:/bin/bash :smile: and [bold]not bold[/bold] red  click  evil 31m")
    assert clean("line 1\r\nline\t2\r") == "line 1\nline\t2"
    assert clean("a\nb\tc", line=True) == "a b c"
    assert clean(f"unterminated {ESC}]8;;http://x and the rest") == "unterminated 8;;http://x and the rest"
    assert clean(None) == "" and clean(42) == "42"


def test_markup_and_literal_print_verbatim() -> None:
    console = Console(file=io.StringIO(), emoji=False, highlight=False, width=200)
    console.print(f"[dim]{markup(HOSTILE)}[/]")
    console.print(literal(HOSTILE))
    output = console.file.getvalue()
    assert output.count("root:x:0:0") == 2 and output.count("[bold]not bold[/bold]") == 2
    assert_literal(output)


CONTROL = st.characters(min_codepoint=0, max_codepoint=0x2070)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=CONTROL, max_size=200))
def test_clean_never_leaves_a_control_character(text: str) -> None:
    once = clean(text)
    assert clean(once) == once
    for char in once:
        code = ord(char)
        assert char in "\n\t" or not (code < 0x20 or 0x7F <= code < 0xA0 or 0x202A <= code <= 0x202E
                                      or 0x2066 <= code <= 0x2069), repr(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200))
def test_clean_keeps_printable_text(text: str) -> None:
    assert clean(text) == text


def test_clean_is_linear_on_adversarial_input() -> None:
    for text in (f"{ESC}]" * 200_000, f"{ESC}[" * 200_000, f"{ESC}[" + "0" * 400_000, f"{ESC}P" + "a" * 400_000):
        assert ESC not in clean(text)  # finishes: no backtracking over the input


# ---------------------------------------------------------------- every print path


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

    corpus = tmp_path_factory.mktemp("hostile-corpus")
    (corpus / EVIL_NAME).write_text(f"# :x: Passwd [red]title[/red] {ESC}]0;t\x07\n\n{HOSTILE}\n", encoding="utf-8")
    (corpus / "plain.md").write_text("# Plain\n\nNothing to see here: an ordinary document.\n", encoding="utf-8")
    index_dir = tmp_path_factory.mktemp("hostile-index")
    summary = ingest([corpus], index_dir, LocalMiniLMEmbeddings())
    assert summary.added == 2, summary.to_dict()
    return corpus, index_dir


@pytest.fixture
def hostile(env: Path, hostile_index: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    corpus, index_dir = hostile_index
    monkeypatch.setenv("KB_INDEX_DIR", str(index_dir))
    monkeypatch.setenv("KB_USAGE_LEDGER", str(env.parent / "usage.sqlite"))
    return corpus


def test_search_and_explain_print_documents_literally(hostile: Path, kb: KbRunner) -> None:
    result = kb("search", "root passwd bash", "-k", "2", "--explain")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert_literal(out)
    assert "root:x:0:0:root" in out and "[bold]not bold[/bold]" in out and ":smile:" in out
    assert "evil" in out and ":x: Passwd" in out  # title and file name shown, cleaned


def test_ingest_summary_prints_file_names_literally(env: Path, hostile_index: tuple[Path, Path], tmp_path: Path, kb: KbRunner) -> None:
    corpus, _ = hostile_index
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / f"{ESC}]0;pwned\x07:x:.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = kb("ingest", "--dry-run", str(corpus), str(tmp_path / "more"))
    assert_literal(result.stdout + result.stderr)
    assert "evil" in result.stdout and ":x:" in result.stderr  # the skipped .png, named as it is


def test_ask_prints_the_answer_and_sources_literally(hostile: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.default_responder = lambda body: Reply(f"The answer is {HOSTILE} [1].")
    result = kb("ask", "root passwd bash", "-k", "1")
    assert result.exit_code == 0, result.stderr
    assert_literal(result.stdout + result.stderr)
    assert "root:x:0:0" in result.stdout and "[bold]not bold[/bold]" in result.stdout
    assert "Sources" in result.stdout and "evil" in result.stdout


def test_chat_and_agent_print_answers_and_tool_output_literally(hostile: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.default_responder = lambda body: Reply(f"Chat says {HOSTILE} [1].")
    chat = kb("chat", "-k", "1", input="root passwd bash\n/sources\n")
    assert chat.exit_code == 0, chat.stderr
    assert_literal(chat.stdout + chat.stderr)
    assert "root:x:0:0" in chat.stdout and "evil" in chat.stdout

    databricks.enqueue(
        Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": f"root {ESC}[31m passwd", "k": 1}}]),
        Reply(f"Agent says {HOSTILE} [1]."),
    )
    agent = kb("agent", "What is in the passwd document?")
    assert agent.exit_code == 0, agent.stderr
    assert_literal(agent.stdout + agent.stderr)
    assert "search_knowledge" in agent.stderr and "root:x:0:0" in agent.stdout


def test_eval_report_prints_gold_text_literally(hostile: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = tmp_path / "gold.jsonl"
    rows = [{"id": f"{ESC}[31m:x:-1", "question": f"unrelated {ESC}]0;t\x07 [bold]q :x:", "sources": ["plain.md"]},
            {"id": "two", "question": "root passwd bash", "sources": [EVIL_NAME]}]
    gold.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = kb("eval", str(gold), "--mode", "dense")
    assert_literal(result.stdout + result.stderr)
    assert "Gold set" in result.stdout


def test_usage_table_prints_caller_names_literally() -> None:
    from agent.usage.report import report_json, usage_table

    row = {"ts": "2025-01-01T00:00:00.000Z", "command": "serve", "endpoint": "e", "caller": f"[bold]{ESC}[31mx:x:y",
           "status": "ok", "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 5.0}
    console = Console(file=io.StringIO(), emoji=False, highlight=False, width=200)
    console.print(usage_table(report_json([row], by="caller", since=None, ledger=None)))
    output = console.file.getvalue()
    assert "[bold]" in output and "x:x:y" in output
    assert_literal(output)
