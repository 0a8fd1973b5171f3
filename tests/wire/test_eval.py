"""`kb eval`: gold files, thresholds, the retrieval report, and --answers judged through the
loopback Databricks server with scripted replies. Uses the test corpus's index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.evaluation.evaluate import ModeResult, Threshold, load_gold, parse_judgement, parse_threshold, relevance_summary
from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply

GOLD = [
    {"id": "pto", "question": "How many vacation days do full-time employees get?", "sources": ["hr/pto.md"],
     "answer": "23 vacation days per year."},
    {"id": "vpn", "question": "Which VPN gateway is for the Berlin office?", "sources": ["it/vpn.html"],
     "answer": "ber.vpn.acme.example"},
    {"id": "exp", "question": "Who approves expenses over 800 euros?", "sources": ["finance/expenses.pdf"],
     "answer": "The finance director, Dana Whitfield."},
    {"id": "dental", "question": "What is the deductible of the dental plan?", "sources": [], "answer": ""},
    {"id": "offtopic", "question": "What is the capital of Australia?", "sources": [], "answer": ""},
]


def write_gold(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- gold files and thresholds


def test_gold_file_is_checked_line_by_line(tmp_path: Path) -> None:
    good = write_gold(tmp_path / "g.jsonl", GOLD[:2])
    questions = load_gold(good)
    assert [q.id for q in questions] == ["pto", "vpn"] and questions[0].sources == ("hr/pto.md",)
    cases = {
        '{"question": "q", "sources": "hr/pto.md"}': "line 1: 'sources' must be a list",
        '{"sources": []}': "line 1: 'question' must be a non-empty string",
        "not json": "line 1: not valid JSON",
        '{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}': "line 2: duplicate id '1'",
        "": "has no questions",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError, match=message):
            load_gold(bad)
    with pytest.raises(UsageError, match="no such gold file"):
        load_gold(tmp_path / "missing.jsonl")


def test_missing_id_and_answer_default_and_paths_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('\n{"question": "q", "sources": ["./hr/pto.md", "hr\\\\pto.md"]}\n', encoding="utf-8")
    (question,) = load_gold(path)
    assert question.id == "line-2" and question.answer == "" and question.sources == ("hr/pto.md",)


def test_threshold_specs() -> None:
    modes = ["dense", "hybrid"]
    assert parse_threshold("ndcg@10=0.8", modes) == Threshold("nDCG@10", 0.8, None)
    assert parse_threshold("hybrid:HIT@5=0.9", modes) == Threshold("hit@5", 0.9, "hybrid")
    assert parse_threshold("grounded=0.75", modes) == Threshold("grounded", 0.75, None)
    for spec, message in {
        "nDCG@10": "expected METRIC=VALUE",
        "precision=0.5": "unknown metric 'precision'",
        "bm25:MRR=0.5": "mode 'bm25' is not evaluated",
        "MRR=high": "'high' is not a number",
        "MRR=80": "between 0 and 1",
    }.items():
        with pytest.raises(UsageError, match=message):
            parse_threshold(spec, modes)


def test_judge_replies_are_read_leniently() -> None:
    assert parse_judgement('```json\n{"verdict": "correct", "grounded": true}\n```') == {"verdict": "correct", "grounded": True}
    assert parse_judgement("I think it is correct") is None
    assert parse_judgement("{broken") is None


def test_suggested_floor_refuses_no_answerable_question() -> None:
    result = ModeResult("hybrid", rows=[
        {"sources": ["a"], "relevance": 0.5}, {"sources": ["b"], "relevance": 0.3},
        {"sources": [], "relevance": 0.1}, {"sources": [], "relevance": 0.2}, {"sources": [], "relevance": 0.6},
    ])
    summary = relevance_summary(result, floor=0.25)
    assert summary["declined_unanswerable"] == 2 and summary["refused_answerable"] == 0
    assert summary["suggested_floor"] == 0.25  # midway between 0.2 and the lowest answerable 0.3
    assert summary["answerable"] == {"min": 0.3, "median": 0.4, "max": 0.5}
    assert relevance_summary(result, floor=0.0)["declined_unanswerable"] == 0  # 0 disables the floor


# ---------------------------------------------------------------- retrieval report through the CLI


def test_eval_reports_every_mode(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD)
    result = kb("eval", str(gold), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["questions"], report["answerable"], report["unanswerable"]) == (5, 3, 2)
    assert set(report["modes"]) == {"dense", "bm25", "hybrid"} and report["primary_mode"] == "hybrid"
    hybrid = report["modes"]["hybrid"]
    assert hybrid["metrics"]["hit@5"] == 1.0 and hybrid["misses"] == []
    assert set(hybrid["metrics"]) == {"hit@1", "hit@3", "hit@5", "hit@10", "recall@10", "MRR", "nDCG@10"}
    rows = {row["id"]: row for row in hybrid["per_question"]}
    assert rows["pto"]["retrieved"][0] == "hr/pto.md" and rows["pto"]["found_at"] == {"hr/pto.md": 1}
    assert rows["offtopic"]["metrics"] is None
    assert [t["target"] for t in report["targets"]][-1] == "hybrid hit@5 >= 0.9"
    relevance = report["relevance"]
    assert relevance["floor"] == 0.25 and relevance["declined_unanswerable"] >= 1  # the capital of Australia
    assert relevance["refused_answerable"] == 0
    assert report["fail_under"] == [] and report["ok"] is True


def test_eval_table_misses_and_unknown_sources(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    rows = GOLD[:2] + [{"id": "typo", "question": "How do I reset my password?", "sources": ["it/faq.md"]}]
    gold = write_gold(tmp_path / "gold.jsonl", rows)
    result = kb("eval", str(gold), "--mode", "bm25", "--mode", "dense")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "gold source it/faq.md is not in the index" in out
    assert "bm25 *" in out and "dense" in out and "hybrid" not in out.split("Misses")[0]  # the first mode asked is primary
    assert "Misses (bm25)" in out and "typo: How do I reset my password?" in out
    assert "expected it/faq.md (not in the top 10)" in out


def test_fail_under_exits_non_zero_with_the_missed_metric(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    rows = GOLD[:2] + [{"id": "typo", "question": "How do I reset my password?", "sources": ["it/faq.md"]}]
    gold = write_gold(tmp_path / "gold.jsonl", rows)
    passed = kb("eval", str(gold), "--mode", "hybrid", "--fail-under", "hit@5=0.6")
    assert passed.exit_code == 0 and "ok   hybrid hit@5 0.667 (floor 0.600)" in passed.stdout
    failed = kb("eval", str(gold), "--fail-under", "nDCG@10=0.8", "--fail-under", "dense:hit@1=0.5", "--json")
    assert failed.exit_code == 1
    assert "error: below --fail-under: hybrid nDCG@10 = 0.667 < 0.800" in failed.stderr
    report = json.loads(failed.stdout)
    assert [c["ok"] for c in report["fail_under"]] == [False, True] and report["ok"] is False


def test_eval_usage_errors(indexed: Path, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", GOLD[:1])
    assert kb("eval", str(tmp_path / "nope.jsonl")).exit_code == 2
    result = kb("eval", str(gold), "--fail-under", "grounded=0.9")
    assert result.exit_code == 2 and "needs --answers" in result.stderr
    result = kb("eval", str(gold), "--answers")
    assert result.exit_code == 2 and "--answers needs a Databricks model" in result.stderr
    result = kb("eval", str(gold), "--mode", "sparse")
    assert result.exit_code == 2 and "unknown search mode 'sparse'" in result.stderr


# ---------------------------------------------------------------- answers judged by the model


def test_answers_are_judged_with_scripted_replies(indexed: Path, databricks: DatabricksStub, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", [GOLD[0], GOLD[2], GOLD[3], GOLD[4]])
    databricks.enqueue(
        Reply("Full-time employees get 23 vacation days per year [1].", usage={"prompt_tokens": 100, "completion_tokens": 10}),
        Reply('{"verdict": "correct", "grounded": true, "declined": false, "reason": "matches the reference"}'),
        Reply("Dana Whitfield approves them [2]."),
        Reply('Sure: {"verdict": "partially", "grounded": false, "declined": false, "reason": "cites the wrong passage"}'),
        Reply("The documents I was given do not cover dental plans."),
        Reply('{"declined": true, "reason": "says the documents do not cover it"}'),
        # the capital of Australia is below the relevance floor: no answer, no judge call
    )
    result = kb("eval", str(gold), "--mode", "hybrid", "--answers", "--json")
    assert result.exit_code == 0, result.stderr
    answers = json.loads(result.stdout)["answers"]
    metrics = answers["metrics"]
    assert (metrics["correct"], metrics["partially"], metrics["wrong"]) == (0.5, 0.5, 0.0)
    assert metrics["answer_score"] == 0.75 and metrics["grounded"] == 0.5
    assert metrics["declined"] == 1.0 and metrics["false_refusals"] == 0 and metrics["unjudged"] == 0
    rows = {row["id"]: row for row in answers["questions"]}
    assert rows["pto"]["cited"][0]["source"] == "hr/pto.md" and rows["pto"]["verdict"] == "correct"
    assert rows["offtopic"]["refused"] is True and rows["offtopic"]["declined"] is True
    assert answers["usage"]["prompt_tokens"] >= 100

    requests = databricks.chat_requests()
    assert len(requests) == 6
    for body in requests:
        assert body["usage_context"]["command"] == "eval" and body["usage_context"]["project"] == "kb"
    steps = [body["usage_context"]["eval_step"] for body in requests]
    assert steps == ["answer", "judge"] * 3
    judge_prompt = "\n".join(m["content"] for m in requests[1]["messages"])
    assert "Reference answer: 23 vacation days per year." in judge_prompt
    assert "Full-time employees get 23 vacation days per year [1]." in judge_prompt
    assert "hr/pto.md" in judge_prompt  # the passages the answer cites
    decline_prompt = "\n".join(m["content"] for m in requests[5]["messages"])
    assert "correctly declined" in decline_prompt and "dental" in decline_prompt


def test_answers_table_and_answer_fail_under(indexed: Path, databricks: DatabricksStub, tmp_path: Path, kb: KbRunner) -> None:
    gold = write_gold(tmp_path / "gold.jsonl", [GOLD[0], GOLD[3]])
    databricks.enqueue(
        Reply("You get 23 days [1]."),
        Reply("not json at all"),
        Reply("Dental plans have a $500 deductible."),
        Reply('{"declined": false, "reason": "it guessed"}'),
    )
    result = kb("eval", str(gold), "--mode", "hybrid", "--answers", "--fail-under", "declined=0.5")
    assert result.exit_code == 1
    assert "1 judge repl(ies) could not be read" in result.stdout
    assert "dental: answered instead of declining: it guessed" in result.stdout
    assert "error: below --fail-under: answers declined = 0.000 < 0.500" in result.stderr
