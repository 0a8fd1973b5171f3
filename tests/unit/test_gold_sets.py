"""The bundled gold sets (eval/*.jsonl) load with kb's own reader and say what kind each question is.

The large set's corpus is not needed here (it is built by bench/large_corpus.py); only its page paths
are checked for shape."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.evaluation.evaluate import load_gold

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"lookup", "paraphrase", "multi", "unanswerable"}
GOLD_SETS = ["eval/knowledge-gold.jsonl", "eval/handbook-gold.jsonl", "eval/large-gold.jsonl"]


@pytest.mark.parametrize("name", GOLD_SETS)
def test_every_question_has_a_kind_that_fits_its_sources(name: str) -> None:
    rows = [json.loads(line) for line in (ROOT / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = load_gold(ROOT / name)
    assert len(questions) == len(rows)
    for row in rows:
        assert row.get("kind") in KINDS, row["id"]
        assert (row["kind"] == "unanswerable") == (not row["sources"]), row["id"]
        if row["kind"] == "multi":
            assert len(row["sources"]) >= 2, row["id"]
        if row["sources"]:
            assert row.get("answer"), row["id"]


def test_the_large_set_is_big_and_balanced_and_names_corpus_pages() -> None:
    rows = [json.loads(line) for line in (ROOT / "eval/large-gold.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    kinds = Counter(row["kind"] for row in rows)
    assert len(rows) >= 80
    assert kinds["paraphrase"] >= len(rows) / 3
    assert kinds["multi"] >= 8 and kinds["unanswerable"] >= 8
    for row in rows:
        for source in row["sources"]:
            part, _, page = source.partition("/")
            assert part in ("postgresql", "python") and page.endswith(".html"), source


def test_the_large_corpus_keeps_manual_pages_and_drops_generated_indexes() -> None:
    from bench.large_corpus import wanted

    assert wanted("postgresql", Path("sql-createtable.html"))
    assert not wanted("postgresql", Path("bookindex.html"))
    assert wanted("python", Path("library/os.html")) and wanted("python", Path("glossary.html"))
    assert not wanted("python", Path("genindex-A.html"))
    assert not wanted("python", Path("whatsnew/3.11.html"))
    assert not wanted("python", Path("_sources/library/os.rst.txt"))
