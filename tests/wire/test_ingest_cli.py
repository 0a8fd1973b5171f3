"""``kb ingest`` end to end (in-process, real local model): formats, reports, exit codes, flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import KbRunner
from tests.corpus import make_pdf


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Good documents of many formats, and one of each kind of broken file."""
    root = tmp_path / "mixed docs"
    (root / "data").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "ops").mkdir()
    (root / "ops" / "runbook.rst").write_text("Runbook\n=======\n\nRestart the ingest worker with systemctl.\n", encoding="utf-8")
    (root / "data" / "hosts.csv").write_text(
        "host,region,owner\n" + "".join(f"web-{i}.acme.example,region-{i},team-{i % 3}\n" for i in range(50)),
        encoding="utf-8",
    )
    (root / "data" / "services.json").write_text(json.dumps([{"name": "ledger", "owner": "finance-platform"}]), encoding="utf-8")
    (root / "notebooks" / "churn.ipynb").write_text(json.dumps({"nbformat": 4, "metadata": {}, "cells": [
        {"cell_type": "markdown", "source": "# Churn\nChurn is computed weekly from the subscriptions table."}]}),
        encoding="utf-8")
    (root / "ops" / "cleanup.py").write_text("def purge_snapshots(days=30):\n    \"\"\"Delete old Delta snapshots.\"\"\"\n", encoding="utf-8")
    (root / "Crème brûlée notes.txt").write_text("Dessert menu for the offsite.", encoding="latin-1")
    (root / "empty.md").write_text("", encoding="utf-8")
    (root / "blank.txt").write_text("   \n", encoding="utf-8")
    (root / "binary.md").write_bytes(b"\x00\x01\x02" * 100)
    (root / "mojibake.txt").write_bytes(b"\x81\x8d\x8f\x90\x9d" * 10)
    make_pdf(root / "scan.pdf", [""])
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.md").write_text("not for the index", encoding="utf-8")
    (root / "outside.md").symlink_to(tmp_path / "elsewhere" / "secret.md")
    return root


def test_everything_readable_is_indexed_and_every_skip_is_reported(env: Path, mixed: Path, kb: KbRunner) -> None:
    result = kb("ingest", str(mixed), "--json")
    assert result.exit_code == 0, result.stderr  # skips are warnings
    summary = json.loads(result.stdout)
    assert summary["added"] == 6
    reasons = {s["source"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "binary.md": "binary data, not text (contains NUL bytes)",
        "blank.txt": "no text to index (only whitespace or empty structure)",
        "empty.md": "empty file",
        "logo.png": "unsupported file type '.png'",
        "mojibake.txt": "undecodable text: not UTF-8, UTF-16 or Latin-1 (byte 0x81 at offset 0)",
        "outside.md": reasons["outside.md"],
        "scan.pdf": "no extractable text (scanned or image-only PDF; run OCR first)",
    }
    assert reasons["outside.md"].startswith("symlink points outside the folder (to ")
    human = kb("ingest", str(mixed))
    assert human.exit_code == 0 and "0 added, 0 changed, 6 unchanged, 0 deleted, 7 skipped" in human.stdout
    assert "skipped scan.pdf: no extractable text" in human.stderr

    def top(query: str) -> dict:
        return json.loads(kb("search", query, "-k", "1", "--json").stdout)["results"][0]

    assert top("which team owns web-42 in region-42")["source"] == "data/hosts.csv"
    assert top("how is churn computed")["source"] == "notebooks/churn.ipynb"
    assert top("dessert menu offsite")["source"] == "Crème brûlée notes.txt"


def test_strict_turns_any_skip_into_a_failure(env: Path, mixed: Path, kb: KbRunner) -> None:
    result = kb("ingest", str(mixed), "--strict")
    assert result.exit_code == 3
    assert result.stderr.strip().endswith("error: 7 file(s) skipped and --strict is set")


def test_nothing_indexable_fails(env: Path, tmp_path: Path, kb: KbRunner) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.md").write_text("", encoding="utf-8")
    (broken / "b.pdf").write_bytes(b"%PDF-1.4 truncated")
    result = kb("ingest", str(broken))
    assert result.exit_code == 3 and "error: nothing could be indexed: all 2 files were skipped" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = kb("ingest", str(empty))
    assert result.exit_code == 3 and f"error: no documents found in {empty}" in result.stderr


def test_dry_run_lists_the_plan(env: Path, corpus: Path, kb: KbRunner) -> None:
    result = kb("ingest", str(corpus), "--dry-run")
    assert result.exit_code == 0
    assert "Would index" in result.stdout and "5 added" in result.stdout
    assert "  + hr/pto.md (" in result.stdout and "chunks)" in result.stdout
    assert "(nothing written)" in result.stdout
    assert not Path(os.environ["KB_INDEX_DIR"]).exists()
    data = json.loads(kb("ingest", str(corpus), "--dry-run", "--json").stdout)
    assert data["dry_run"] is True and {f["source"] for f in data["files"]} >= {"hr/pto.md", "finance/expenses.pdf"}


def test_size_cap_setting(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "big.txt").write_text("word " * 3000, encoding="utf-8")
    (docs / "small.txt").write_text("tiny note about the size cap", encoding="utf-8")
    monkeypatch.setenv("KB_MAX_FILE_MB", "0.01")
    summary = json.loads(kb("ingest", str(docs), "--json").stdout)
    assert summary["added"] == 1
    assert summary["skipped"][0]["source"] == "big.txt"
    assert summary["skipped"][0]["reason"].startswith("larger than the size cap (15 KB > 10 KB")
    monkeypatch.setenv("KB_MAX_FILE_MB", "0")
    bad = kb("ingest", str(docs))
    assert bad.exit_code == 2 and bad.stderr.startswith("error: invalid KB_MAX_FILE_MB")


def test_a_damaged_index_is_one_clear_error(env: Path, corpus: Path, kb: KbRunner) -> None:
    chroma = Path(os.environ["KB_INDEX_DIR"]) / "chroma"
    chroma.mkdir(parents=True)
    (chroma / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)
    for args in (["ingest", str(corpus)], ["search", "vacation"]):
        result = kb(*args)
        assert result.exit_code == 3
        assert result.stderr.startswith(f"error: the index at {chroma.parent} is unusable")
