"""Incremental sync semantics, in-process with a fast deterministic embedding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from ingest.errors import IndexBusyError, RemoteServerError
from ingest.store.chroma import connect, names, open_store
from ingest.store.folder import writer_lock
from ingest.sync.job import ingest
from ingest.sync.plan import make_plan
from ingest.sync.records import NoRecords, Records


class HashEmbeddings(Embeddings):
    """Deterministic 32-dim vectors from a hash; counts what it embeds; can fail on a given call; can
    take ``delay`` seconds per batch (the crash tests' child processes, to be killed mid-ingest)."""

    model_id = "test:hash-32"

    def __init__(self, fail_on_call: int | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call
        self.delay = delay

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(list(texts))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RemoteServerError("Databricks server error from serving endpoint 'e' (500)")
        return [vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return vector(text)

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b / 255 - 0.5 for b in digest]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


def paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(
        f"{topic.title()} paragraph {i}: " + " ".join(f"{topic}-{i}-{w}" for w in range(60)) for i in range(n)
    )


def write_docs(root: Path) -> Path:
    (root / "hr").mkdir(parents=True, exist_ok=True)
    (root / "eng").mkdir(parents=True, exist_ok=True)
    (root / "hr" / "pto.md").write_text(f"# PTO\n\n{paragraphs('vacation', 4)}\n", encoding="utf-8")
    (root / "hr" / "benefits.md").write_text(f"# Benefits\n\n{paragraphs('pension', 3)}\n", encoding="utf-8")
    (root / "eng" / "oncall.md").write_text(f"# On-call\n\n{paragraphs('pager', 5)}\n", encoding="utf-8")
    (root / "eng" / "deploy.txt").write_text(paragraphs("deploy", 3), encoding="utf-8")
    age(root)
    return root


def age(root: Path, seconds: float = 60) -> None:
    """Backdate every file so the size+mtime shortcut applies (files written this instant are re-hashed)."""
    past = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def chunks_in(index_dir: Path) -> dict[str, dict]:
    pages = open_store(index_dir, HashEmbeddings()).scan(texts=False)
    return {cid: meta for page in pages for cid, meta in zip(page.ids, page.metadatas)}


def expected_ids(*roots: Path) -> set[str]:
    plan = make_plan(list(roots), NoRecords())
    return {i for entry in plan.added for i in entry.ids}


def assert_consistent(index_dir: Path, *roots: Path) -> dict[str, dict]:
    present = chunks_in(index_dir)
    assert set(present) == expected_ids(*roots)
    places = [(m["root"], m["source"], m["chunk"]) for m in present.values()]
    assert len(places) == len(set(places))  # no two chunks claim the same place
    return present


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_docs(tmp_path / "docs")


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


def test_unchanged_rerun_embeds_nothing_and_reads_nothing(docs: Path, index_dir: Path, monkeypatch) -> None:
    first = ingest([docs], index_dir, HashEmbeddings())
    assert (first.added, first.chunks_embedded) == (4, first.chunks_total) and first.chunks_total > 10
    import ingest.sync.plan as sync

    def no_read(*args, **kwargs):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(sync, "file_sha256", no_read)
    monkeypatch.setattr(sync, "load", no_read)
    embeddings = HashEmbeddings()
    again = ingest([docs], index_dir, embeddings)
    assert (again.added, again.changed, again.unchanged, again.deleted) == (0, 0, 4, 0)
    assert again.chunks_embedded == again.chunks_deleted == 0 and embeddings.calls == []
    assert again.chunks_total == first.chunks_total
    monkeypatch.undo()
    assert_consistent(index_dir, docs)


def test_touched_but_identical_file_is_rehashed_not_reembedded(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    os.utime(docs / "hr" / "pto.md")
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings)
    assert summary.unchanged == 4 and embeddings.calls == []


def test_modified_file_reembeds_only_its_changed_chunks(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    before = chunks_in(index_dir)
    oncall = docs / "eng" / "oncall.md"
    oncall.write_text(oncall.read_text("utf-8").replace("Pager paragraph 4", "Escalation paragraph 4"), encoding="utf-8")
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings)
    assert (summary.changed, summary.unchanged) == (1, 3)
    assert summary.chunks_embedded == 1 and "Escalation paragraph 4" in embeddings.embedded[0]
    assert summary.chunks_deleted == 1
    after = assert_consistent(index_dir, docs)
    untouched = {i for i, m in before.items() if m["source"] != "eng/oncall.md"}
    assert untouched <= set(after)


def test_inserting_at_the_top_reuses_vectors_of_shifted_chunks(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    pto = docs / "hr" / "pto.md"
    pto.write_text(pto.read_text("utf-8").replace("# PTO\n\n", f"# PTO\n\n{paragraphs('intro', 2)}\n\n"), encoding="utf-8")
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings)  # every later chunk moved: new ids, same texts
    assert summary.changed == 1 and summary.chunks_reused >= 6
    assert all("Intro paragraph" in text for text in embeddings.embedded)
    assert_consistent(index_dir, docs)


def test_deleted_file_disappears(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    (docs / "eng" / "deploy.txt").unlink()
    summary = ingest([docs], index_dir, HashEmbeddings())
    assert (summary.deleted, summary.unchanged) == (1, 3) and summary.chunks_deleted >= 1
    present = assert_consistent(index_dir, docs)
    assert not any(m["source"] == "eng/deploy.txt" for m in present.values())
    assert [f["action"] for f in summary.files] == ["deleted"]


def test_rename_does_not_duplicate_and_is_not_reembedded(docs: Path, index_dir: Path) -> None:
    first = ingest([docs], index_dir, HashEmbeddings())
    (docs / "hr" / "pto.md").rename(docs / "hr" / "time-off.md")
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings)
    assert (summary.added, summary.deleted) == (1, 1)
    assert summary.chunks_embedded == 0 and summary.chunks_reused > 0 and embeddings.calls == []
    present = assert_consistent(index_dir, docs)
    assert summary.chunks_total == first.chunks_total
    sources = {m["source"] for m in present.values()}
    assert "hr/time-off.md" in sources and "hr/pto.md" not in sources


def test_several_roots_coexist(tmp_path: Path, index_dir: Path) -> None:
    a = write_docs(tmp_path / "team-a")
    b = tmp_path / "team-b"
    b.mkdir()
    (b / "notes.md").write_text("# Notes\n\nTeam B keeps its own notes.\n", encoding="utf-8")
    ingest([a], index_dir, HashEmbeddings())
    ingest([b], index_dir, HashEmbeddings())
    (a / "hr" / "benefits.md").unlink()
    summary = ingest([a], index_dir, HashEmbeddings())
    assert summary.deleted == 1
    present = assert_consistent(index_dir, a, b)
    assert any(m["source"] == "notes.md" and m["root"] == str(b.resolve()) for m in present.values())
    both = ingest([a, b], index_dir, HashEmbeddings())
    assert both.unchanged == 4 and both.chunks_embedded == 0


def test_a_subfolder_or_a_file_keeps_its_root_and_siblings(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    sub = ingest([docs / "hr"], index_dir, HashEmbeddings())
    assert (sub.added, sub.unchanged, sub.deleted) == (0, 2, 0)
    (docs / "hr" / "benefits.md").unlink()
    sub = ingest([docs / "hr"], index_dir, HashEmbeddings())
    assert sub.deleted == 1
    deploy = docs / "eng" / "deploy.txt"
    deploy.write_text(deploy.read_text("utf-8") + "\n\nOne more deploy rule.", encoding="utf-8")
    single = ingest([deploy], index_dir, HashEmbeddings())
    assert (single.changed, single.deleted, single.added) == (1, 0, 0)
    present = assert_consistent(index_dir, docs)
    assert {m["source"] for m in present.values()} == {"hr/pto.md", "eng/oncall.md", "eng/deploy.txt"}


def test_a_wider_root_takes_over_a_nested_one_without_reembedding(docs: Path, index_dir: Path) -> None:
    ingest([docs / "hr"], index_dir, HashEmbeddings())
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings)
    assert summary.added == 4 and summary.deleted == 2
    assert not any("Vacation paragraph" in t or "Pension paragraph" in t for t in embeddings.embedded)
    present = assert_consistent(index_dir, docs)
    assert {m["root"] for m in present.values()} == {str(docs.resolve())}


def test_dry_run_prints_the_plan_and_touches_nothing(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    (docs / "hr" / "benefits.md").unlink()
    (docs / "eng" / "new.md").write_text("# New\n\nBrand new page.\n", encoding="utf-8")
    (docs / "hr" / "pto.md").write_text("# PTO\n\nRewritten.\n", encoding="utf-8")

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in index_dir.rglob("*") if p.is_file()}

    before = snapshot()
    summary = ingest([docs], index_dir, None, dry_run=True)
    assert snapshot() == before
    assert summary.dry_run and (summary.added, summary.changed, summary.unchanged, summary.deleted) == (1, 1, 2, 1)
    actions = {(f["action"], f["source"]) for f in summary.files}
    assert actions == {("added", "eng/new.md"), ("changed", "hr/pto.md"), ("deleted", "hr/benefits.md")}
    assert summary.chunks_embedded == 2 and summary.chunks_deleted > 2
    real = ingest([docs], index_dir, HashEmbeddings())
    assert (real.added, real.changed, real.deleted, real.chunks_embedded) == (1, 1, 1, 2)


def test_rebuild_keeps_queries_on_the_old_index_until_the_new_one_is_ready(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    reader = open_store(index_dir, HashEmbeddings())  # a long-lived reader, like the API
    old_name = reader.name
    summary = ingest([docs], index_dir, HashEmbeddings(), rebuild=True)
    assert summary.added == 4 and summary.chunks_embedded == summary.chunks_total
    client = connect(index_dir)
    assert old_name in names(client)  # still readable by anyone who opened it before the switch
    time.sleep(1.1)
    assert reader.name != old_name and reader.nearest(HashEmbeddings().embed_query("pager"), 1)
    assert open_store(index_dir, HashEmbeddings()).name == reader.name
    ingest([docs], index_dir, HashEmbeddings())
    assert old_name not in names(connect(index_dir))  # dropped by the next writer
    assert_consistent(index_dir, docs)


def test_broken_files_are_remembered_and_retried_once_changed(docs: Path, index_dir: Path, monkeypatch) -> None:
    broken = docs / "eng" / "services.json"
    broken.write_text('{"name": "shop", ', encoding="utf-8")
    age(docs)
    first = ingest([docs], index_dir, HashEmbeddings())
    assert [s.source for s in first.skipped] == ["eng/services.json"]
    import ingest.sync.plan as sync

    loads = []
    real_load = sync.load
    monkeypatch.setattr(sync, "load", lambda file, **kw: loads.append(file.source) or real_load(file, **kw))
    again = ingest([docs], index_dir, HashEmbeddings())
    assert again.skipped == first.skipped and loads == []
    broken.write_text('{"name": "shop", "owner": "payments"}', encoding="utf-8")
    fixed = ingest([docs], index_dir, HashEmbeddings())
    assert fixed.skipped == [] and fixed.added == 1 and loads == ["eng/services.json"]


def test_a_file_that_turns_unreadable_loses_its_chunks(docs: Path, index_dir: Path) -> None:
    ingest([docs], index_dir, HashEmbeddings())
    (docs / "eng" / "deploy.txt").write_bytes(b"\x00\x01binary now" * 50)
    summary = ingest([docs], index_dir, HashEmbeddings())
    assert summary.skipped[0].source == "eng/deploy.txt" and summary.deleted == 1
    present = assert_consistent(index_dir, docs)
    assert not any(m["source"] == "eng/deploy.txt" for m in present.values())


def test_permanent_failure_commits_what_was_done_and_the_rerun_converges(docs: Path, index_dir: Path) -> None:
    with pytest.raises(RemoteServerError) as caught:
        ingest([docs], index_dir, HashEmbeddings(fail_on_call=3), batch_size=4)
    assert "chunks were written" in str(caught.value) and "run 'kb ingest' again" in str(caught.value)
    present_before = set(chunks_in(index_dir))
    with _records(index_dir) as records:
        committed = {d["source"] for d in records.documents()}
    assert present_before and committed  # work before the failure was kept
    embeddings = HashEmbeddings()
    summary = ingest([docs], index_dir, embeddings, batch_size=4)
    missing = expected_ids(docs) - present_before
    assert summary.chunks_embedded + summary.chunks_reused == len(missing)
    assert_consistent(index_dir, docs)


def _records(index_dir: Path):
    from contextlib import closing

    return closing(Records(index_dir))


def test_a_second_writer_is_refused_at_once(docs: Path, index_dir: Path) -> None:
    with writer_lock(index_dir):
        started = time.monotonic()
        with pytest.raises(IndexBusyError, match="another 'kb ingest' is writing"):
            ingest([docs], index_dir, HashEmbeddings())
        assert time.monotonic() - started < 5
    assert ingest([docs], index_dir, HashEmbeddings()).added == 4


def test_summary_json_is_machine_readable(docs: Path, index_dir: Path) -> None:
    data = json.loads(json.dumps(ingest([docs], index_dir, HashEmbeddings()).to_dict()))
    assert set(data) >= {"added", "changed", "unchanged", "deleted", "skipped", "chunks_embedded", "chunks_reused",
                         "chunks_deleted", "chunks_total", "files", "seconds", "dry_run"}
    assert data["files"][0] == {"action": "added", "source": "eng/deploy.txt", "root": str(docs.resolve()),
                                "chunks": data["files"][0]["chunks"], "to_embed": data["files"][0]["chunks"],
                                "to_delete": 0}


def test_the_index_folder_inside_the_documents_is_not_indexed(docs: Path) -> None:
    index_dir = docs / "kb-index"
    ingest([docs], index_dir, HashEmbeddings())
    summary = ingest([docs], index_dir, HashEmbeddings())
    assert summary.skipped == [] and summary.unchanged == 4
    shutil.rmtree(index_dir)
