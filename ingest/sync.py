"""Keep the Chroma collection in sync with folders of documents: the whole job of ``kb ingest``.

- Chunk ids are sha256 of (root, source, chunk number, text): a re-run cannot create duplicates.
- Records (``ingest.records``) make re-runs incremental: a file whose size and mtime are unchanged
  is not even read, a file whose content hash is unchanged is not re-parsed, a changed file embeds
  only chunk ids that are new, a deleted file's chunks are removed, and an identical chunk text
  already in the index (a renamed or moved file, a shifted chunk) reuses its stored vector.
- Writes are ordered so that ``kill -9`` at any moment is safe (see ``ingest.writer``); a run that
  did not finish leaves a mark, and the next one sweeps chunks no record accounts for.
- One writer per index (``writer_lock``); queries read a consistent index throughout (see
  ``ingest.store`` for ``--rebuild``).
- Several roots live side by side: a run only deletes documents under the paths it was given. A
  path inside an already indexed root keeps that root; a new root that contains an indexed root
  takes its documents over (re-using their vectors).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.documents import DEFAULT_MAX_FILE_BYTES, SkipFile, Skipped, SourceFile
from ingest.loaders import Scope, discover, load
from ingest.records import NoRecords, Record, Records, records_path, writer_lock
from ingest.split import Chunk, split_document
from ingest.textio import size_cap_reason

ProgressFn = Callable[[int, int], None]  # (chunks done, chunks total)
RACY_NS = 2_000_000_000  # a file modified within 2 s of being read is hashed again next time


def chunk_id(root: Path, source: str, index: int, text: str) -> str:
    digest = hashlib.sha256("\x00".join((str(root), source, str(index), text)).encode("utf-8"))
    return digest.hexdigest()[:40]


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- plan


@dataclass
class FilePlan:
    file: SourceFile
    sha: str
    size: int
    mtime_ns: int
    title: str
    chunks: list[Chunk]
    ids: list[str]
    old_ids: list[str]


@dataclass
class NewSkip:
    file: SourceFile
    sha: str
    size: int
    mtime_ns: int
    reason: str


@dataclass
class Plan:
    scopes: list[Scope]
    added: list[FilePlan] = field(default_factory=list)
    changed: list[FilePlan] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    touched: list[tuple[SourceFile, int, int]] = field(default_factory=list)  # same content, new mtime
    deleted: dict[tuple[Path, str], list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    new_skips: list[NewSkip] = field(default_factory=list)  # remembered so they are not re-parsed
    forget: list[tuple[Path, str]] = field(default_factory=list)  # skip records of files now gone

    @property
    def roots(self) -> list[Path]:
        return sorted({scope.root for scope in self.scopes})

    @property
    def chunks_to_write(self) -> int:
        return sum(len(set(p.ids) - set(p.old_ids)) for p in self.added + self.changed)

    @property
    def chunks_to_delete(self) -> int:
        stale = sum(len(set(p.old_ids) - set(p.ids)) for p in self.changed)
        return stale + sum(len(ids) for ids in self.deleted.values())

    @property
    def has_writes(self) -> bool:
        return bool(self.added or self.changed or self.deleted or self.touched or self.new_skips or self.forget)


def make_plan(
    paths: Iterable[Path], records: Records | NoRecords, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    exclude: Iterable[Path] = (),
) -> Plan:
    """Compare the files under ``paths`` with the records: what to add, re-embed, delete, skip."""
    known_roots = records.roots()
    found = discover(paths, known_roots=known_roots, exclude=exclude)
    plan = Plan(scopes=found.scopes, skipped=list(found.skipped))
    known: dict[Path, dict[str, Record]] = {root: records.for_root(root) for root in plan.roots}
    seen: set[tuple[Path, str]] = set()
    for file in found.files:
        seen.add((file.root, file.source))
        _plan_file(plan, file, known[file.root].get(file.source), max_bytes)
    for root in plan.roots:
        scopes = [scope for scope in plan.scopes if scope.root == root]
        for source, record in known[root].items():
            if (root, source) not in seen and any(scope.covers(source) for scope in scopes):
                _plan_gone(plan, root, source, record)
    for absorbed in _nested_roots(known_roots, plan.scopes):  # their files now belong to a wider root
        for source, record in records.for_root(absorbed).items():
            _plan_gone(plan, absorbed, source, record)
    return plan


def _plan_file(plan: Plan, file: SourceFile, previous: Record | None, max_bytes: int) -> None:
    try:
        stat = file.path.stat()
    except OSError as exc:
        return _unreadable(plan, file, previous, f"cannot read: {exc.strerror or exc}")
    if stat.st_size > max_bytes:  # never hashed nor read: the size cap also bounds time
        return _unreadable(plan, file, previous, size_cap_reason(stat.st_size, max_bytes))
    same_stat = (
        previous is not None
        and previous.size == stat.st_size
        and previous.mtime_ns == stat.st_mtime_ns
        and previous.checked_ns - stat.st_mtime_ns > RACY_NS
    )
    if same_stat:
        sha = previous.sha
    else:
        try:
            sha = file_sha256(file.path)
        except OSError as exc:
            return _unreadable(plan, file, previous, f"cannot read: {exc.strerror or exc}")
    if previous is not None and previous.sha == sha:
        if not same_stat:
            plan.touched.append((file, stat.st_size, stat.st_mtime_ns))
        if previous.skip_reason is None:
            plan.unchanged.append(file.source)
            return
        from ingest.records import LOADER_VERSION

        if previous.version == LOADER_VERSION:
            plan.skipped.append(Skipped(file.source, previous.skip_reason))
            return
    try:
        document = load(file, max_bytes=max_bytes)
    except SkipFile as exc:
        plan.skipped.append(Skipped(file.source, str(exc)))
        plan.new_skips.append(NewSkip(file, sha, stat.st_size, stat.st_mtime_ns, str(exc)))
        if previous is not None and previous.ids:  # it was indexed before, now unreadable: its chunks go
            plan.deleted[(file.root, file.source)] = previous.ids
        return
    chunks = split_document(document)
    ids = [chunk_id(file.root, file.source, c.metadata["chunk"], c.text) for c in chunks]
    for chunk in chunks:
        chunk.metadata["root"] = str(file.root)
        chunk.metadata["text_sha"] = text_sha(chunk.text)
    indexed_before = previous is not None and previous.skip_reason is None
    entry = FilePlan(file, sha, stat.st_size, stat.st_mtime_ns, document.title, chunks, ids,
                     previous.ids if previous is not None else [])
    (plan.changed if indexed_before else plan.added).append(entry)


def _unreadable(plan: Plan, file: SourceFile, previous: Record | None, reason: str) -> None:
    plan.skipped.append(Skipped(file.source, reason))
    if previous is not None and previous.ids:
        plan.deleted[(file.root, file.source)] = previous.ids
    elif previous is not None:
        plan.forget.append((file.root, file.source))


def _plan_gone(plan: Plan, root: Path, source: str, record: Record) -> None:
    if record.skip_reason is None:
        plan.deleted[(root, source)] = record.ids
    else:
        plan.forget.append((root, source))


def _nested_roots(known_roots: list[Path], scopes: list[Scope]) -> list[Path]:
    folders = [scope.root / scope.prefix if scope.prefix else scope.root for scope in scopes if not scope.is_file]
    roots = {scope.root for scope in scopes}
    return [r for r in known_roots if r not in roots and any(r.is_relative_to(folder) for folder in folders)]


# ---------------------------------------------------------------- summary


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
    chunks_reused: int = 0  # written with a vector already in the index (same text): not re-embedded
    files: list[dict[str, Any]] = field(default_factory=list)  # per added/changed/deleted file
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def file_changes(plan: Plan) -> list[dict[str, Any]]:
    """What the plan does per file: the dry run's listing and the ``files`` of ``--json``."""
    changes = []
    for action, entries in (("added", plan.added), ("changed", plan.changed)):
        for entry in entries:
            new, old = set(entry.ids), set(entry.old_ids)
            changes.append({"action": action, "source": entry.file.source, "root": str(entry.file.root),
                            "chunks": len(entry.ids), "to_embed": len(new - old), "to_delete": len(old - new)})
    for (root, source), ids in sorted(plan.deleted.items()):
        changes.append({"action": "deleted", "source": source, "root": str(root), "chunks": 0,
                        "to_embed": 0, "to_delete": len(ids)})
    return changes


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
        files=file_changes(plan),
    )


# ---------------------------------------------------------------- the job


def ingest(
    paths: Iterable[Path],
    index_dir: Path,
    embeddings: Any,
    *,
    dry_run: bool = False,
    rebuild: bool = False,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    progress: ProgressFn | None = None,
    chroma_url: str | None = None,
    batch_size: int | None = None,
) -> Summary:
    """Bring the index at ``index_dir`` (or on the Chroma server ``chroma_url``) in line with ``paths``."""
    from ingest.lexical import sync_lexical
    from ingest.store import KbChroma, activate, collection_ids, connect, open_target, store_key
    from ingest.writer import apply_plan

    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    key = store_key(chroma_url)
    if dry_run:  # read-only: creates nothing, not even the index folder
        with closing(_read_only_records(index_dir, key, rebuild)) as records:
            return plan_summary(make_plan(paths, records, max_bytes=max_bytes, exclude=[index_dir]))
    with writer_lock(index_dir), _index_errors(chroma_url or str(index_dir)):
        client = connect(index_dir, chroma_url, create=True)
        target = open_target(client, embeddings, rebuild=rebuild, where=chroma_url or str(index_dir))
        with closing(Records(index_dir)) as records:
            records.adopt(target.id, key)
            records.purge(key, collection_ids(client) | {target.id})
            if not target.activate:
                records.activate(key)
            plan = make_plan(paths, records, max_bytes=max_bytes, exclude=[index_dir])
            summary = apply_plan(plan, target.collection, embeddings, records, progress=progress, batch_size=batch_size)
            if target.activate:  # a rebuild is complete: readers switch to it now
                activate(target)
                records.activate(key)
        summary.files = file_changes(plan)
        store = KbChroma(collection_name=target.name, embedding_function=embeddings, client=client,
                         create_collection_if_not_exists=False)
        sync_lexical(index_dir, store._collection)  # BM25 index: same chunks as Chroma, rebuilt when they changed
        if not chroma_url:  # queries read this copy without importing chromadb (ingest/snapshot.py)
            from ingest.snapshot import sync_snapshot

            sync_snapshot(index_dir, store._collection)
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary


@contextmanager
def _index_errors(where: str):
    """Chroma failing under us (disk full, damaged files, server errors) is one clear error."""
    from chromadb.errors import ChromaError

    from ingest.store import unusable

    try:
        yield
    except ChromaError as exc:
        raise unusable(where, exc) from None


def _read_only_records(index_dir: Path, key: str, rebuild: bool) -> Records | NoRecords:
    if rebuild or not records_path(index_dir).exists():
        return NoRecords()
    records = Records(index_dir, collection="", read_only=True)
    records.collection = records.get_state(f"active:{key}") or ""
    return records
