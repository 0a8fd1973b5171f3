"""CI's retrieval gate: ingest the bundled knowledge/ into a fresh index and run
`kb eval eval/knowledge-gold.jsonl` offline with floors, exactly as a team would in CI.

The floors sit a little under the measured figures (README, "Retrieval quality") so that a change
that makes retrieval clearly worse fails the build. Run with -s to see the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent.cli.app import app
from agent.evaluation.report import print_report

REPO = Path(__file__).resolve().parents[2]
FLOORS = ["nDCG@10=0.90", "hit@5=0.95", "recall@10=0.95", "MRR=0.90", "dense:hit@5=0.90", "bm25:hit@5=0.90"]

pytestmark = pytest.mark.slow


def test_bundled_gold_set_meets_its_floors(env: Path) -> None:
    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", str(REPO / "knowledge"), "--strict"], catch_exceptions=False)
    assert ingested.exit_code == 0, ingested.stderr

    args = ["eval", str(REPO / "eval" / "knowledge-gold.jsonl"), "--json"]
    for floor in FLOORS:
        args += ["--fail-under", floor]
    result = runner.invoke(app, args, catch_exceptions=False)
    report = json.loads(result.stdout)
    print_report(report, Console(width=160))  # the figures, for the log
    assert result.exit_code == 0, result.stderr

    assert report["answerable"] >= 40 and report["unanswerable"] >= 5
    assert report["unknown_sources"] == []  # every gold path names an indexed document
    assert all(check["ok"] for check in report["fail_under"])
    hybrid = report["modes"]["hybrid"]["metrics"]
    assert hybrid["hit@5"] >= 0.9  # the target, on answerable questions
    relevance = report["relevance"]
    assert relevance["refused_answerable"] == 0  # the default floor never refuses a gold question
    assert relevance["declined_unanswerable"] >= 3  # and does decline the off-topic ones
