"""`kb eval` per question kind and `kb eval --compare` on the test corpus's index (retrieval only:
no Databricks endpoint is configured, none is needed)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import KbRunner

GOLD = [
    {"id": "pto", "kind": "lookup", "question": "How many vacation days do full-time employees get?", "sources": ["hr/pto.md"]},
    {"id": "vpn", "kind": "paraphrase", "question": "Which gateway do I pick for the office in Berlin?", "sources": ["it/vpn.html"]},
    {"id": "both", "kind": "multi", "question": "Vacation days and the SEV1 acknowledgement time?",
     "sources": ["hr/pto.md", "eng/oncall.md"]},
    {"id": "offtopic", "question": "What is the capital of Australia?", "sources": []},
]


def write_gold(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_eval_reports_metrics_per_kind(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD)
    report = json.loads(kb("eval", str(gold), "--mode", "hybrid", "--json").stdout)
    kinds = report["modes"]["hybrid"]["by_kind"]
    assert list(kinds) == ["lookup", "paraphrase", "multi", "unanswerable", "overall"]
    assert kinds["lookup"]["metrics"]["hit@5"] == 1.0 and kinds["lookup"]["questions"] == 1
    assert kinds["unanswerable"]["metrics"] is None and kinds["unanswerable"]["declined"] == 1.0  # below the floor
    assert kinds["overall"]["questions"] == 4 and kinds["overall"]["answerable"] == 3
    assert set(kinds["overall"]["metrics"]) >= {"hit@5", "MRR", "nDCG@10"}
    assert report["settings"]["KB_FUSION"] == "convex" and report["settings"]["KB_RERANK"] == "off"
    assert [r["kind"] for r in report["modes"]["hybrid"]["per_question"]] == ["lookup", "paraphrase", "multi", "unanswerable"]
    table = kb("eval", str(gold), "--mode", "hybrid").stdout
    assert "By question kind (hybrid)" in table and "unanswerable" in table and "MRR@10" in table


def test_compare_prints_the_difference_and_changed_questions(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD)
    result = kb("eval", str(gold), "--compare", "KB_SEARCH_MODE=dense", "--compare", "KB_MAX_PER_SOURCE=1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseline"]["settings"]["KB_SEARCH_MODE"] == "hybrid"
    assert report["variant"]["settings"]["KB_SEARCH_MODE"] == "dense" and report["variant"]["settings"]["KB_MAX_PER_SOURCE"] == "1"
    assert report["variant"]["label"] == "current settings + KB_SEARCH_MODE=dense + KB_MAX_PER_SOURCE=1"
    for name, row in report["metrics"].items():
        assert row["delta"] == round(row["variant"] - row["baseline"], 4), name
    assert set(report["by_kind"]) == {"lookup", "paraphrase", "multi", "unanswerable", "overall"}
    for change in report["changed"]:
        assert change["before"] != change["after"]
    table = kb("eval", str(gold), "--compare", "KB_SEARCH_MODE=bm25")
    assert table.exit_code == 0 and "KB_SEARCH_MODE: hybrid -> bm25" in table.stdout and "Changed:" in table.stdout


def test_compare_with_another_index_per_side(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD[:1])
    result = kb("eval", str(gold), "--compare", f"KB_INDEX_DIR={tmp_path / 'empty'}")
    assert result.exit_code != 0 and "error:" in result.stderr  # the variant's index does not exist: one line
    same = json.loads(kb("eval", str(gold), "--baseline", f"KB_INDEX_DIR={indexed}",
                         "--compare", "KB_TOP_K=3", "--json").stdout)
    assert same["baseline"]["settings"]["KB_INDEX_DIR"] == str(indexed) == same["variant"]["settings"]["KB_INDEX_DIR"]
    assert same["changed"] == [] and all(row["delta"] == 0 for row in same["metrics"].values())


def test_compare_usage_errors_are_one_line(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD[:1])
    for args, message in (
        (["--compare", "KB_NOPE=1"], "--compare: unknown setting 'KB_NOPE'"),
        (["--compare", "KB_FUSION_ALPHA=7"], "invalid KB_FUSION_ALPHA"),
        (["--compare", "DATABRICKS_TOKEN=dapi123"], "is a secret"),
        (["--compare", "bm25"], "expected KEY=VALUE"),
        (["--baseline", "KB_TOP_K=3"], "--baseline needs --compare"),
        (["--compare", "KB_FUSION=rrf", "--mode", "dense"], "drop --mode"),
    ):
        result = kb("eval", str(gold), *args)
        assert result.exit_code != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "dapi123" not in result.stderr


def test_compare_warns_about_gold_sources_missing_from_a_sides_index(indexed: Path, tmp_path: Path,
                                                                     kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", [*GOLD[:1], {"id": "typo", "question": "Where?", "sources": ["hr/ptoo.md"]}])
    report = json.loads(kb("eval", str(gold), "--compare", "KB_SEARCH_MODE=dense", "--json").stdout)
    assert report["baseline"]["unknown_sources"] == ["hr/ptoo.md"] == report["variant"]["unknown_sources"]
    table = kb("eval", str(gold), "--compare", "KB_SEARCH_MODE=dense").stdout
    assert "gold source hr/ptoo.md is not in its index" in table
