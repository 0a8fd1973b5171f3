"""End-to-end CLI runs: ingest, search and ask, in-process (CliRunner) and as real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import CANARY, KbRunner, kb_command
from tests.databricks_stub import DatabricksStub, Error, Reply


def _last_prompt(stub: DatabricksStub) -> str:
    body = stub.chat_requests()[-1]
    return "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))


def test_ingest_then_rerun_is_incremental(env: Path, corpus: Path, kb: KbRunner) -> None:
    first = kb("ingest", str(corpus))
    assert first.exit_code == 0, first.stderr
    assert "5 added, 0 changed, 0 unchanged, 0 deleted, 0 skipped" in first.stdout
    again = kb("ingest", str(corpus), "--json")
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["unchanged"], summary["chunks_embedded"]) == (0, 5, 0)
    assert summary["chunks_total"] > 5


def test_ingest_defaults_to_knowledge_dir(env: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_KNOWLEDGE_DIR", str(corpus / "hr"))
    result = kb("ingest", "--dry-run")
    assert result.exit_code == 0
    assert "Would index" in result.stdout and "1 added" in result.stdout
    assert not Path(os.environ["KB_INDEX_DIR"]).exists()  # dry run writes nothing


def test_search_json_shape_and_relevance(indexed: Path, kb: KbRunner) -> None:
    result = kb("search", "how many vacation days do I get", "-k", "3", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["query"] == "how many vacation days do I get"
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    top = data["results"][0]
    assert top["source"] == "hr/pto.md" and top["title"] == "Time Off Policy"
    assert "23 vacation days" in top["text"]
    assert set(top) >= {"rank", "source", "score", "title", "text"}
    scores = [r["score"] for r in data["results"]]
    # hybrid: the fused score in [0, 1] plus page support (at most KB_PAGE_SUPPORT x KB_PAGE_SUPPORT_CHUNKS)
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1 + 0.05 * 2


def test_search_finds_pdf_pages_and_html(indexed: Path, kb: KbRunner) -> None:
    pdf = json.loads(kb("search", "who approves expenses over 800 euros", "-k", "1", "--json").stdout)["results"][0]
    assert pdf["source"] == "finance/expenses.pdf" and pdf["page"] == 2
    html = json.loads(kb("search", "VPN gateway for Berlin office", "-k", "1", "--json").stdout)["results"][0]
    assert html["source"] == "it/vpn.html" and "ber.vpn.acme.example" in html["text"]
    assert "tracking" not in html["text"] and "footer" not in html["text"]


def test_ask_json_on_the_wire(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    databricks.enqueue(Reply("Full-time employees get 23 vacation days [1]; up to 4 carry over [1].",
                             usage={"prompt_tokens": 321, "completion_tokens": 17, "total_tokens": 338}))
    result = kb("ask", "How many vacation days do I get?", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"].startswith("Full-time employees get 23 vacation days [1]")
    assert data["sources"][0]["n"] == 1 and data["sources"][0]["source"] == data["passages"][0]["source"] == "hr/pto.md"
    assert data["usage"]["prompt_tokens"] == 321 and data["usage"]["completion_tokens"] == 17
    body = databricks.chat_requests()[0]
    assert body["model"] == "databricks-meta-llama-3-3-70b-instruct" and body["temperature"] == 0
    assert body["usage_context"] == {"command": "ask", "project": "kb"}
    prompt = _last_prompt(databricks)
    assert '<passage n="1" source="hr/pto.md"' in prompt and "23 vacation days" in prompt
    assert "Question: How many vacation days do I get?" in prompt


def test_ask_streams_answer_and_lists_cited_sources(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    def cite_the_pdf(body: dict) -> Reply:
        prompt = "\n".join(m["content"] for m in body["messages"])
        n = next(i for i in range(1, 6) if f'<passage n="{i}" source="finance/expenses.pdf"' in prompt)
        return Reply(f"The finance director approves [{n}].", chunk_size=3)

    databricks.enqueue(cite_the_pdf)
    result = kb("ask", "Who approves expenses over 800 euros?")
    assert result.exit_code == 0, result.stderr
    assert "The finance director approves [" in result.stdout
    assert "Sources" in result.stdout and "finance/expenses.pdf · Expense Policy · page 2" in result.stdout
    assert databricks.chat_requests()[0]["stream"] is True


def test_ask_without_llm_shows_passages_and_says_what_to_set(indexed: Path, kb: KbRunner) -> None:
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 0
    assert "no Databricks model configured: set DATABRICKS_TOKEN and DATABRICKS_HOST (or base_url)" in result.stderr
    assert "hr/pto.md" in result.stdout and "23 vacation days" in result.stdout
    data = json.loads(kb("ask", "How many vacation days do I get?", "--json").stdout)
    assert data["answer"] is None and data["passages"][0]["source"] == "hr/pto.md"


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (Error(401, "UNAUTHENTICATED", "Invalid access token."),
         "Databricks rejected the token (401: UNAUTHENTICATED: Invalid access token.); check the credentials ("),
        (Error(403, "PERMISSION_DENIED", "User lacks CAN_QUERY."), "Databricks rejected the token (403"),
        (Error(429, "REQUEST_LIMIT_EXCEEDED", "Rate limit", headers={"Retry-After": "0.01"}), "rate limit"),
        (Error(503, "TEMPORARILY_UNAVAILABLE", "Endpoint is scaling up"), "server error"),
    ],
)
def test_ask_remote_failures_are_one_line_and_exit_4(indexed: Path, databricks: DatabricksStub, monkeypatch, error, fragment, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.enqueue(error)
    result = kb("ask", "How many vacation days do I get?")
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_ask_unknown_endpoint(indexed: Path, databricks: DatabricksStub, monkeypatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "typo-endpoint")
    result = kb("ask", "vacation?")
    assert result.exit_code == 4
    assert "serving endpoint 'typo-endpoint' was not found" in result.stderr


def test_ask_stream_cut_prints_partial_and_marks_it(indexed: Path, databricks: DatabricksStub, monkeypatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.enqueue(Reply("You get twenty three vacation days per year [1] and more", chunk_size=4, drop_after_chunks=5))
    result = kb("ask", "vacation?")
    assert result.exit_code == 4
    assert result.stdout.startswith("You get twenty")
    assert "cut off" in result.stderr and "incomplete" in result.stderr


def test_no_index_and_bad_settings_are_clear(env: Path, monkeypatch, kb: KbRunner) -> None:
    result = kb("search", "anything")
    assert result.exit_code == 3 and "run 'kb ingest' first" in result.stderr
    monkeypatch.setenv("KB_USAGE_CONTEXT", '{"team": 7}')
    result = kb("search", "anything")
    assert result.exit_code == 2 and result.stderr.startswith("error: invalid KB_USAGE_CONTEXT")


def test_missing_path_is_a_usage_error(env: Path, kb: KbRunner) -> None:
    result = kb("ingest", "no/such/folder")
    assert result.exit_code == 2 and f"no such file or folder: {env / 'no/such/folder'}" in result.stderr


def test_index_built_with_another_embedding_model_is_refused(env: Path, corpus: Path, kb: KbRunner) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ingest.sync.job import ingest

    fake = DeterministicFakeEmbedding(size=384)
    fake.__dict__["model_id"] = "fake:deterministic"
    ingest([corpus / "hr"], Path(os.environ["KB_INDEX_DIR"]), fake)
    result = kb("search", "vacation")
    assert result.exit_code == 3
    assert "built with fake:deterministic" in result.stderr and "kb ingest --rebuild" in result.stderr


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(kb_command(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_real_process_help_version_and_ask(indexed: Path, databricks: DatabricksStub, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items()}
    help_run = _run(["--help"], environment, tmp_path)
    assert help_run.returncode == 0 and "ingest" in help_run.stdout and "ask" in help_run.stdout
    assert _run(["--version"], environment, tmp_path).stdout.startswith("kb ")
    databricks.enqueue(Reply("Twenty-three days [1]."))
    asked = _run(["ask", "How many vacation days do I get?"], environment, tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert "Twenty-three days [1]." in asked.stdout and "hr/pto.md" in asked.stdout
    databricks.enqueue(Error(401, "UNAUTHENTICATED", "Invalid access token."))
    failed = _run(["ask", "vacation?"], environment, tmp_path)
    assert failed.returncode == 4 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().startswith("error: Databricks rejected the token")
    for output in (asked.stdout, asked.stderr, failed.stdout, failed.stderr):
        assert CANARY not in output


def test_passages_are_wrapped_not_cropped_when_piped(indexed: Path, kb: KbRunner) -> None:
    result = kb("search", "how many vacation days do I get", "-k", "1")
    assert result.exit_code == 0
    flat = " ".join(line.strip("│ ") for line in result.stdout.splitlines())
    assert "carry over until April 30" in " ".join(flat.split())
