"""Keep the Chroma collection in sync with folders of documents.

- Chunk ids are sha256 of (root, source, chunk number, text): a re-run cannot create duplicates.
- A SQLite record per file (its content hash and chunk ids) makes re-runs incremental: unchanged
  files are not even read, changed files re-embed only chunks whose ids are new, deleted files'
  chunks are removed, and chunks no record accounts for (a crash between steps) are swept.
- Order of writes makes a crash at any moment safe: chunks are upserted before the file's record,
  stale chunks are deleted after it; the next run converges.
- One writer per index, enforced by a lock file that the OS releases if the process dies.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.errors import IndexBusyError
from ingest.loaders import DEFAULT_MAX_FILE_BYTES, SkipFile, Skipped, SourceFile, discover, load
from ingest.split import Chunk, split_document

BATCH = 64
ProgressFn = Callable[[int, int], None]  # (chunks done, chunks total)


def chunk_id(root: Path, source: str, index: int, text: str) -> str:
    digest = hashlib.sha256("\x00".join((str(root), source, str(index), text)).encode("utf-8"))
    return digest.hexdigest()[:40]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- records


class Records:
    """What was indexed, per (root, source): content hash, title and chunk ids."""

    def __init__(self, index_dir: Path) -> None:
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(index_dir) / "records.sqlite"
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (root TEXT NOT NULL, source TEXT NOT NULL, sha TEXT NOT NULL,"
            " title TEXT NOT NULL, chunk_ids TEXT NOT NULL, PRIMARY KEY (root, source))"
        )
        self._db.commit()

    def for_root(self, root: Path) -> dict[str, tuple[str, list[str]]]:
        rows = self._db.execute("SELECT source, sha, chunk_ids FROM files WHERE root = ?", (str(root),))
        return {source: (sha, json.loads(ids)) for source, sha, ids in rows}

    def put(self, root: Path, source: str, sha: str, title: str, ids: list[str]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", (str(root), source, sha, title, json.dumps(ids))
        )
        self._db.commit()

    def delete(self, root: Path, source: str) -> None:
        self._db.execute("DELETE FROM files WHERE root = ? AND source = ?", (str(root), source))
        self._db.commit()

    def clear(self) -> None:
        self._db.execute("DELETE FROM files")
        self._db.commit()

    def documents(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT root, source, title, chunk_ids FROM files ORDER BY root, source")
        return [{"root": r, "source": s, "title": t, "chunks": len(json.loads(ids))} for r, s, t, ids in rows]

    def close(self) -> None:
        self._db.close()


@contextmanager
def writer_lock(index_dir: Path):
    """Hold the index's single-writer lock, or fail at once with ``IndexBusyError``."""
    from filelock import FileLock, Timeout

    Path(index_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(index_dir) / "ingest.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise IndexBusyError(
            f"another 'kb ingest' is writing to {index_dir}", hint="wait for it to finish and run again"
        ) from None
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- plan


@dataclass
class FilePlan:
    file: SourceFile
    sha: str
    title: str
    chunks: list[Chunk]
    ids: list[str]
    old_ids: list[str]


@dataclass
class Plan:
    roots: list[Path]
    added: list[FilePlan] = field(default_factory=list)
    changed: list[FilePlan] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: dict[tuple[Path, str], list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def chunks_to_write(self) -> int:
        return sum(len(set(p.ids) - set(p.old_ids)) for p in self.added + self.changed)

    @property
    def chunks_to_delete(self) -> int:
        stale = sum(len(set(p.old_ids) - set(p.ids)) for p in self.changed)
        return stale + sum(len(ids) for ids in self.deleted.values())


def make_plan(paths: Iterable[Path], records: Records, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Plan:
    files, skipped = discover(paths)
    plan = Plan(roots=sorted({f.root for f in files} | {Path(p).resolve() for p in paths if Path(p).is_dir()}))
    plan.skipped.extend(skipped)
    known = {root: records.for_root(root) for root in plan.roots}
    seen: set[tuple[Path, str]] = set()
    for file in files:
        seen.add((file.root, file.source))
        previous = known[file.root].get(file.source)
        try:
            sha = file_sha256(file.path)
        except OSError as exc:
            plan.skipped.append(Skipped(file.source, f"cannot read: {exc.strerror or exc}"))
            continue
        if previous and previous[0] == sha:
            plan.unchanged.append(file.source)
            continue
        try:
            document = load(file, max_bytes=max_bytes)
        except SkipFile as exc:
            plan.skipped.append(Skipped(file.source, str(exc)))
            if previous:  # it was indexed before, now unreadable: its old chunks go
                plan.deleted[(file.root, file.source)] = previous[1]
            continue
        chunks = split_document(document)
        for chunk in chunks:
            chunk.metadata["root"] = str(file.root)
        ids = [chunk_id(file.root, file.source, c.metadata["chunk"], c.text) for c in chunks]
        entry = FilePlan(file, sha, document.title, chunks, ids, previous[1] if previous else [])
        (plan.changed if previous else plan.added).append(entry)
    for root in plan.roots:
        for source, (_, ids) in known[root].items():
            if (root, source) not in seen:
                plan.deleted[(root, source)] = ids
    return plan


# ---------------------------------------------------------------- apply


@dataclass
class Summary:
    added: int
    changed: int
    unchanged: int
    deleted: int
    skipped: list[Skipped]
    chunks_embedded: int
    chunks_deleted: int
    chunks_total: int
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def apply_plan(plan: Plan, store: Any, records: Records, *, progress: ProgressFn | None = None) -> Summary:
    """Write the plan into the store: embed and upsert new chunks, then record, then delete stale ones."""
    collection = store._collection  # the raw chromadb collection for id-level reads and deletes
    todo = plan.added + plan.changed
    existing = _existing_ids(collection, [i for p in todo for i in p.ids])
    total = sum(1 for p in todo for i in p.ids if i not in existing)
    done = 0
    if progress:
        progress(0, total)

    batch: list[tuple[str, Chunk]] = []
    waiting: list[FilePlan] = []  # files whose chunks are in the batch, recorded once it is written

    def flush() -> None:
        nonlocal done
        if batch:
            store.add_texts(
                texts=[c.text for _, c in batch], metadatas=[c.metadata for _, c in batch], ids=[i for i, _ in batch]
            )
            done += len(batch)
            batch.clear()
            if progress:
                progress(done, total)
        for entry in waiting:
            _commit_file(entry, collection, records)
        waiting.clear()

    for entry in todo:
        for cid, chunk in zip(entry.ids, entry.chunks):
            if cid not in existing:
                batch.append((cid, chunk))
                if len(batch) >= BATCH:
                    flush()
        waiting.append(entry)
        if not batch:
            flush()
    flush()

    deleted_chunks = sum(len(set(p.old_ids) - set(p.ids)) for p in plan.changed)
    for (root, source), ids in plan.deleted.items():
        if ids:
            collection.delete(ids=ids)
        records.delete(root, source)
        deleted_chunks += len(ids)
    deleted_chunks += _sweep_orphans(collection, records, plan.roots)
    return Summary(
        added=len(plan.added),
        changed=len(plan.changed),
        unchanged=len(plan.unchanged),
        deleted=len(plan.deleted),
        skipped=plan.skipped,
        chunks_embedded=done,
        chunks_deleted=deleted_chunks,
        chunks_total=collection.count(),
    )


def _commit_file(entry: FilePlan, collection: Any, records: Records) -> None:
    records.put(entry.file.root, entry.file.source, entry.sha, entry.title, entry.ids)
    stale = sorted(set(entry.old_ids) - set(entry.ids))
    if stale:
        collection.delete(ids=stale)


def _existing_ids(collection: Any, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        found.update(collection.get(ids=ids[start : start + 500], include=[])["ids"])
    return found


def _sweep_orphans(collection: Any, records: Records, roots: list[Path]) -> int:
    """Delete chunks under these roots that no record accounts for (left by an interrupted run)."""
    removed = 0
    for root in roots:
        expected = {i for _, ids in records.for_root(root).values() for i in ids}
        present = collection.get(where={"root": str(root)}, include=[])["ids"]
        orphans = [i for i in present if i not in expected]
        if orphans:
            collection.delete(ids=orphans)
            removed += len(orphans)
    return removed


def plan_summary(plan: Plan) -> Summary:
    return Summary(
        added=len(plan.added),
        changed=len(plan.changed),
        unchanged=len(plan.unchanged),
        deleted=len(plan.deleted),
        skipped=plan.skipped,
        chunks_embedded=plan.chunks_to_write,
        chunks_deleted=plan.chunks_to_delete,
        chunks_total=0,
        dry_run=True,
    )


def ingest(
    paths: Iterable[Path],
    index_dir: Path,
    embeddings: Any,
    *,
    dry_run: bool = False,
    rebuild: bool = False,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: ProgressFn | None = None,
) -> Summary:
    """Bring the index at ``index_dir`` in line with ``paths``: the whole job of ``kb ingest``."""
    from ingest.store import delete_collection, open_store

    paths = [Path(p) for p in paths]
    if dry_run:  # read-only: creates nothing, not even the index folder
        if rebuild or not (Path(index_dir) / "records.sqlite").exists():
            return plan_summary(make_plan(paths, _EmptyRecords(), max_bytes=max_bytes))
        with closing(Records(index_dir)) as records:
            return plan_summary(make_plan(paths, records, max_bytes=max_bytes))
    with writer_lock(index_dir):
        if rebuild:
            delete_collection(index_dir)
        with closing(Records(index_dir)) as records:
            if rebuild:
                records.clear()
            plan = make_plan(paths, records, max_bytes=max_bytes)
            store = open_store(index_dir, embeddings, create=True)
            return apply_plan(plan, store, records, progress=progress)


class _EmptyRecords:
    def for_root(self, root: Path) -> dict:
        return {}
