"""Chunks are embedded under their context header (title › section path), and an index written by an
older splitter is brought up to date instead of mixing chunks embedded two ways."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ingest.store.chroma import open_store
from ingest.sync.job import ingest
from ingest.sync.records import LOADER_VERSION, records_path
from tests.wire.test_sync import HashEmbeddings, age, assert_consistent, write_docs


def test_the_vector_is_computed_from_the_header_and_the_text_is_stored_clean(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    (docs / "hr" / "leave.md").write_text("# Leave\n\n## Carry-over\n\nFive days move to next year.\n", "utf-8")
    embeddings = HashEmbeddings()
    ingest([docs], tmp_path / "index", embeddings)
    embedded = next(t for t in embeddings.embedded if "Five days" in t)
    assert embedded.startswith("Leave › Carry-over\n\n") and embedded.endswith("Five days move to next year.")
    pages = open_store(tmp_path / "index", HashEmbeddings()).scan()
    stored = {text: meta for page in pages for text, meta in zip(page.texts, page.metadatas)}
    text = next(t for t in stored if "Five days" in t)
    assert "›" not in text and stored[text]["context"] == "Leave › Carry-over"
    assert stored[text]["section"] == "Leave > Carry-over"


def test_an_index_from_an_older_splitter_is_reparsed_and_converges(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    index_dir = tmp_path / "index"
    first = ingest([docs], index_dir, HashEmbeddings())
    with sqlite3.connect(records_path(index_dir)) as db:  # as written by the splitter before this one
        db.execute("UPDATE records SET version = ?", (LOADER_VERSION - 1,))
    age(docs)
    embeddings = HashEmbeddings()
    again = ingest([docs], index_dir, embeddings)
    assert again.unchanged == 0 and again.changed == 4  # every file read again, not trusted as unchanged
    assert again.chunks_embedded == 0 and embeddings.calls == []  # same chunks: ids and vectors kept
    assert again.chunks_total == first.chunks_total
    assert_consistent(index_dir, docs)
    third = ingest([docs], index_dir, HashEmbeddings())
    assert third.unchanged == 4  # recorded with the current version now
