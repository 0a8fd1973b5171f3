"""Access labels at ingest (changed rules re-label without re-embedding, shown by --dry-run) and the
CLI's --as-groups on search, ask and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.wire.test_access_api import FRONT_MARK, HR_MARK, LEGAL_MARK, MARKS, PUBLIC_MARK, write_access_corpus


@pytest.fixture
def corpus(env: Path, tmp_path: Path) -> Path:
    return write_access_corpus(tmp_path / "docs")


def ingest_json(kb, *args: str) -> dict:
    result = kb("ingest", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def search(kb, *args: str) -> str:
    result = kb("search", "vacation salary case contract matter memo", "-k", "10", "--json", *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_changed_rules_relabel_without_re_embedding(kb, corpus: Path) -> None:
    first = ingest_json(kb, str(corpus))
    assert first["chunks_embedded"] > 0 and first["relabelled"] == 0
    assert MARKS["hr"] not in search(kb, "--as-groups", "legal")
    assert MARKS["hr"] in search(kb, "--as-groups", "hr")
    assert all(mark in search(kb) for mark in MARKS.values())  # the CLI reads everything by default

    (corpus / ".kb-access").write_text("**: *\nhr/**: hr, legal\nlegal/**: legal\n", encoding="utf-8")
    planned = ingest_json(kb, str(corpus), "--dry-run")
    assert planned["relabelled"] == 1 and planned["chunks_embedded"] == 0
    change = [f for f in planned["files"] if f["action"] == "relabelled"]
    assert change == [{"action": "relabelled", "source": "hr/salaries.md", "root": str(corpus.resolve()),
                       "chunks": change[0]["chunks"], "to_embed": 0, "to_delete": 0, "access": ["hr", "legal"],
                       "access_before": ["hr"]}]
    shown = kb("ingest", str(corpus), "--dry-run")
    assert "= hr/salaries.md" in shown.stdout and "readers: hr, legal" in shown.stdout
    assert MARKS["hr"] not in search(kb, "--as-groups", "legal")  # a dry run changes nothing

    done = ingest_json(kb, str(corpus))
    assert done["relabelled"] == 1 and done["chunks_embedded"] == 0 and done["chunks_reused"] == 0
    assert MARKS["hr"] in search(kb, "--as-groups", "legal")  # snapshot and BM25 follow the new labels
    for mode in ("dense", "bm25", "hybrid"):
        assert MARKS["hr"] not in search(kb, "--as-groups", "nobody-special", "--mode", mode)
    assert ingest_json(kb, str(corpus))["relabelled"] == 0  # converged

    (corpus / ".kb-access").unlink()  # no rules: everyone reads everything but the front-matter memo
    ingest_json(kb, str(corpus))
    out = search(kb, "--as-groups", "x")
    assert MARKS["hr"] in out and MARKS["legal"] in out and MARKS["front"] not in out


def test_access_default_none_and_bad_rules(kb, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (corpus / ".kb-access").write_text("hr/**: hr\n", encoding="utf-8")
    monkeypatch.setenv("KB_ACCESS_DEFAULT", "none")
    ingest_json(kb, str(corpus))
    out = search(kb, "--as-groups", "hr")
    assert MARKS["hr"] in out and MARKS["public"] not in out and MARKS["legal"] not in out
    (corpus / ".kb-access").write_text("hr/** hr\n", encoding="utf-8")
    bad = kb("ingest", str(corpus))
    assert bad.exit_code != 0 and "line 1" in bad.stderr and "error:" in bad.stderr
    invalid = kb("search", "x", "--as-groups", "h r")
    assert invalid.exit_code != 0 and "KB_AS_GROUPS" in invalid.stderr


def test_ask_and_eval_as_groups(kb, corpus: Path, databricks, tmp_path: Path) -> None:
    ingest_json(kb, str(corpus))
    databricks.default_responder = lambda body: __import__("tests.databricks_stub", fromlist=["Reply"]).Reply(
        json.dumps(body["messages"]))
    asked = kb("ask", f"What are the salary bands {HR_MARK}?", "--json", "--as-groups", "legal", "-k", "10")
    assert asked.exit_code == 0, asked.output
    assert MARKS["hr"] not in asked.stdout and MARKS["legal"] in asked.stdout
    assert MARKS["hr"] not in json.dumps(databricks.chat_requests())
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(q) for q in [
        {"id": "q1", "question": "salary bands and vacation payouts", "sources": ["hr/salaries.md"]},
        {"id": "q2", "question": "vacation days a year", "sources": ["public/vacation.md"]},
    ]) + "\n", encoding="utf-8")
    as_pub = kb("eval", str(gold), "--json", "--as-groups", "")
    as_hr = kb("eval", str(gold), "--json", "--as-groups", "hr")
    assert as_pub.exit_code == as_hr.exit_code == 0, as_pub.output
    pub, hr = json.loads(as_pub.stdout), json.loads(as_hr.stdout)
    assert "hr/salaries.md" in json.dumps(pub.get("unknown_sources") or pub.get("unknown"))  # as if never ingested
    assert MARKS["hr"] not in as_pub.stdout and PUBLIC_MARK not in json.dumps(pub.get("unknown") or [])
    assert "hr/salaries.md" not in json.dumps(hr.get("unknown_sources") or hr.get("unknown") or [])
    assert FRONT_MARK not in as_hr.stdout and LEGAL_MARK not in as_hr.stdout


def test_chroma_and_snapshot_filter_alike(kb, corpus: Path, env: Path) -> None:
    import os

    from ingest.access import readable_by
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.store.base import Filter
    from ingest.store.chroma import open_store
    from ingest.store.snapshot import open_snapshot_store

    ingest_json(kb, str(corpus))
    index_dir = Path(os.environ["KB_INDEX_DIR"])
    embeddings = LocalMiniLMEmbeddings()
    chroma, snapshot = open_store(index_dir, embeddings), open_snapshot_store(index_dir, embeddings)
    assert snapshot is not None
    vector = embeddings.embed_query("salary bands vacation contract")
    for groups, folders in (({"hr"}, {"public", "hr"}), (set(), {"public"}), ({"legal"}, {"public", "legal"})):
        only = Filter(readable_by=readable_by(groups))
        dense = [[h.metadata["source"] for h in store.nearest(vector, 50, filter=only)] for store in (chroma, snapshot)]
        assert dense[0] == dense[1] and {s.split("/")[0] for s in dense[0]} == folders
        assert ("public/memo.md" in dense[0]) == ("legal" in groups)  # front matter
        lexical = [{cid for cid, _ in store.lexical("vacation salary contract", filter=only).top(50)}
                   for store in (chroma, snapshot)]
        assert lexical[0] == lexical[1] == {cid for page in chroma.scan(filter=only) for cid in page.ids}
