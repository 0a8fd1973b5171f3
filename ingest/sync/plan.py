"""What ``kb ingest`` has to do: compare the files under the given paths with the records.

- Chunk ids are sha256 of (root, source, chunk number, text): a re-run cannot create duplicates.
- A file whose size and mtime are unchanged is not even read (``checksum=True``, ``kb ingest
  --checksum``: every file is hashed instead), a file whose content hash is unchanged is not
  re-parsed, a changed file embeds only chunk ids that are new, a deleted file's chunks are removed.
- Files are parsed (loaded and split) in a child process under a time and memory limit when a
  ``parser`` is given (``ingest.sync.isolation``): a file that exceeds them is skipped and reported.
  ``max_chunks`` (``KB_MAX_CHUNKS_PER_FILE``) keeps the first chunks of a file that has more, and
  reports it on every run until the cap or the file changes.
- Several roots live side by side: a run only deletes documents under the paths it was given. A
  path inside an already indexed root keeps that root; a new root that contains an indexed root
  takes its documents over.
- Access labels (``ingest.access``): every chunk carries its document's readers (``access`` metadata,
  from the root's ``.kb-access`` and the document's front matter). A document whose content is
  unchanged but whose labels changed (the rules changed) is planned as ``relabel``: its chunks get the
  new labels without being re-embedded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.access import ACCESS_KEY, LABELLED_KEY, Rules, front_matter_access, load_rules
from ingest.documents import DEFAULT_MAX_FILE_BYTES, SkipFile, Skipped, SourceFile
from ingest.loaders import Scope, discover, load
from ingest.split import Chunk, split_document
from ingest.sync.isolation import ParseWorker
from ingest.sync.records import LOADER_VERSION, NoRecords, Record, Records
from ingest.textio import size_cap_reason
from ingest.volumes import volume_path

ProgressFn = Callable[[int, int], None]  # (chunks done, chunks total)
PhaseFn = Callable[[str, int, int], None]  # (phase, done, total): "opening", "scanning", "reading" files, "lexical"
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
    chunks_total: int | None = None  # the file's chunks before KB_MAX_CHUNKS_PER_FILE cut it (None: not cut)
    access: list[str] | None = None  # the labels its chunks get (ingest.access)
    front: bool = False  # ... from its front matter
    old_access: list[str] | None = None  # the labels its record had (None: new, or recorded before labels)


@dataclass
class Relabel:
    """A document whose content is unchanged but whose readers changed: new labels, no re-embedding."""

    root: Path
    source: str
    ids: list[str]
    access: list[str]
    front: bool
    old_access: list[str] | None


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
    truncated: list[dict[str, Any]] = field(default_factory=list)  # files cut at KB_MAX_CHUNKS_PER_FILE
    relabel: list[Relabel] = field(default_factory=list)  # same content, other readers

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
        return bool(self.added or self.changed or self.deleted or self.touched or self.new_skips or self.forget
                    or self.relabel)


def make_plan(
    paths: Iterable[Path], records: Records | NoRecords, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    exclude: Iterable[Path] = (), parser: ParseWorker | None = None, checksum: bool = False,
    max_chunks: int | None = None, access_default: str = "all", remote: Any = None, phase: PhaseFn | None = None,
) -> Plan:
    """Compare the files under ``paths`` with the records: what to add, re-embed, delete, skip.

    ``parser``: parse in that worker process (time and memory limits) instead of in this one.
    ``checksum``: hash every file, even when its size and modification time match the record.
    ``max_chunks``: keep at most that many chunks of a file (the rest is reported, not indexed).
    ``access_default``: ``KB_ACCESS_DEFAULT`` (``all``: a document no access rule covers is readable
    by everyone; ``none``: by no one). ``phase``: told "scanning", then "reading" (files done, files total).
    """
    if phase:
        phase("scanning", 0, 0)
    known_roots = records.roots()
    found = _discover_all(list(paths), known_roots, exclude, remote)
    plan = Plan(scopes=found.scopes, skipped=list(found.skipped))
    known: dict[Path, dict[str, Record]] = {root: records.for_root(root) for root in plan.roots}
    seen: set[tuple[Path, str]] = set()
    options = _Options(max_bytes, parser, checksum, max_chunks,
                       {root: load_rules(root, access_default) for root in plan.roots})
    for number, file in enumerate(found.files):
        if phase:
            phase("reading", number, len(found.files))
        seen.add((file.root, file.source))
        _plan_file(plan, file, known[file.root].get(file.source), options)
    for root in plan.roots:
        scopes = [scope for scope in plan.scopes if scope.root == root]
        for source, record in known[root].items():
            if (root, source) not in seen and any(scope.covers(source) for scope in scopes):
                _plan_gone(plan, root, source, record)
    for absorbed in _nested_roots(known_roots, plan.scopes):  # their files now belong to a wider root
        for source, record in records.for_root(absorbed).items():
            _plan_gone(plan, absorbed, source, record)
    return plan


def _discover_all(paths: list[Any], known_roots: list[Path], exclude: Iterable[Path], remote: Any) -> Any:
    """Local files, plus (``remote``: an ``ingest.volumes.VolumeSource``) the Unity Catalog volume paths,
    listed and mirrored through the Files API, then planned like local files."""

    volumes = [v for v in (volume_path(p) for p in paths) if v is not None] if remote is not None else []
    found = discover([p for p in paths if remote is None or volume_path(p) is None], known_roots=known_roots,
                     exclude=exclude)
    if volumes:
        fetched = remote.discover(volumes, known_roots)
        found.files = sorted(found.files + fetched.files, key=lambda f: (str(f.root), f.source))
        found.skipped += fetched.skipped
        found.scopes += fetched.scopes
    return found


@dataclass(frozen=True)
class _Options:
    max_bytes: int
    parser: ParseWorker | None
    checksum: bool
    max_chunks: int | None
    rules: dict[Path, Rules] = field(default_factory=dict)

    def labels(self, file: SourceFile) -> tuple[list[str], bool]:
        """The labels of a document read now: its front matter's, else its root's rules'."""
        front = front_matter_access(file.path)
        rules = self.rules.get(file.root) or Rules()
        return list(rules.labels(file.source, front)), front is not None


def _cut_note(file: SourceFile, total: int, kept: int) -> dict[str, Any]:
    return {"source": file.source, "root": str(file.root), "chunks": total, "kept": kept,
            "reason": f"{total} chunks, only the first {kept} indexed (KB_MAX_CHUNKS_PER_FILE={kept})"}


def _parse(file: SourceFile, options: _Options) -> tuple[str, list[Chunk]]:
    if options.parser is not None:
        return options.parser.parse(file)
    document = load(file, max_bytes=options.max_bytes)
    return document.title, split_document(document)


def _plan_file(plan: Plan, file: SourceFile, previous: Record | None, options: _Options) -> None:
    max_bytes = options.max_bytes
    try:
        stat = file.path.stat()
    except OSError as exc:
        return _unreadable(plan, file, previous, f"cannot read: {exc.strerror or exc}")
    if stat.st_size > max_bytes:  # never hashed nor read: the size cap also bounds time
        return _unreadable(plan, file, previous, size_cap_reason(stat.st_size, max_bytes))
    same_stat = (
        not options.checksum
        and previous is not None
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
        cut_differently = previous.chunks_total is not None and len(previous.ids) != min(
            previous.chunks_total, options.max_chunks or previous.chunks_total)
        if not same_stat and not cut_differently:
            plan.touched.append((file, stat.st_size, stat.st_mtime_ns))
        # an index made by an older loader/splitter (LOADER_VERSION) is re-parsed: its chunks would
        # otherwise mix with chunks split or embedded another way; unchanged chunk ids are kept
        if previous.skip_reason is None and not cut_differently and previous.version == LOADER_VERSION:
            plan.unchanged.append(file.source)
            _plan_labels(plan, file, previous, options)
            if previous.chunks_total is not None:  # still cut: said on every run, like a skip
                plan.truncated.append(_cut_note(file, previous.chunks_total, len(previous.ids)))
            return
        if previous.skip_reason is not None and previous.version == LOADER_VERSION:
            plan.skipped.append(Skipped(file.source, previous.skip_reason))
            return
    try:
        title, chunks = _parse(file, options)
    except SkipFile as exc:
        plan.skipped.append(Skipped(file.source, str(exc)))
        plan.new_skips.append(NewSkip(file, sha, stat.st_size, stat.st_mtime_ns, str(exc)))
        if previous is not None and previous.ids:  # it was indexed before, now unreadable: its chunks go
            plan.deleted[(file.root, file.source)] = previous.ids
        return
    chunks_total = None
    if options.max_chunks is not None and len(chunks) > options.max_chunks:
        chunks_total = len(chunks)
        chunks = chunks[: options.max_chunks]
        plan.truncated.append(_cut_note(file, chunks_total, len(chunks)))
    ids = [chunk_id(file.root, file.source, c.metadata["chunk"], c.embedded) for c in chunks]
    access, front = options.labels(file)
    for chunk in chunks:
        chunk.metadata["root"] = str(file.root)
        chunk.metadata["text_sha"] = text_sha(chunk.embedded)  # what the vector was computed from
        chunk.metadata[ACCESS_KEY] = list(access)
        chunk.metadata[LABELLED_KEY] = True
    indexed_before = previous is not None and previous.skip_reason is None
    entry = FilePlan(file, sha, stat.st_size, stat.st_mtime_ns, title, chunks, ids,
                     previous.ids if previous is not None else [], chunks_total, access, front,
                     previous.access if indexed_before else None)
    (plan.changed if indexed_before else plan.added).append(entry)


def _plan_labels(plan: Plan, file: SourceFile, previous: Record, options: _Options) -> None:
    """An unchanged document: re-label its chunks if its readers changed (the file is read only when its
    record predates labels; front matter cannot change while the content does not)."""
    if previous.access is not None and previous.front:
        return
    if previous.access is None:
        access, front = options.labels(file)
    else:
        access, front = list((options.rules.get(file.root) or Rules()).labels(file.source)), False
    if access != previous.access:
        plan.relabel.append(Relabel(file.root, file.source, list(previous.ids), access, front, previous.access))


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
    truncated: list[dict[str, Any]] = field(default_factory=list)  # cut at KB_MAX_CHUNKS_PER_FILE
    relabelled: int = 0  # unchanged documents whose chunks got new access labels (not re-embedded)

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
    for entry in plan.relabel:
        changes.append({"action": "relabelled", "source": entry.source, "root": str(entry.root),
                        "chunks": len(entry.ids), "to_embed": 0, "to_delete": 0, "access": list(entry.access),
                        "access_before": entry.old_access})
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
        truncated=plan.truncated,
        relabelled=len(plan.relabel),
    )
