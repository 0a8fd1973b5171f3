"""Apply a plan to a chunk store (``ingest.store.base.ChunkStore``): embed, upsert, record, delete,
in a crash-safe order.

Order of writes, so that ``kill -9`` at any moment converges on the next run:

1. the collection is marked dirty in the records;
2. chunks are upserted batch by batch (ids are deterministic, so a repeat is a no-op);
3. a file's record is written only once all its chunks are in, then its stale chunks are deleted;
4. deleted files' chunks are removed, then their records;
5. orphans (chunks under the run's roots that no record accounts for) are swept, the mark cleared.

A crash after 2 leaves chunks without a record: the next run finds them present and does not embed
them again. Re-labelling (new access labels, same content: ``Plan.relabel``, and the chunks a changed
file keeps) rewrites the chunks' metadata with their stored vectors before the record is updated, so
a crash in between re-labels again on the next run. A crash after 3 leaves stale chunks: swept. A crash in 4: the deletion is planned again.

Embedding runs in worker threads (as many as ``embeddings.max_concurrency``, default 1) while the
main thread writes finished batches, so the model never waits for the store. Before embedding, chunk
texts already in the store (matched by ``text_sha`` metadata) reuse their stored vectors. If
embedding fails for good, the batches that succeeded are written and their files recorded before
the error is raised: nothing done is lost, and the re-run only embeds what is missing.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ingest.access import ACCESS_KEY, LABELLED_KEY
from ingest.errors import IngestError, KbError
from ingest.split import Chunk
from ingest.store.base import ChunkStore, Filter, all_ids
from ingest.sync.plan import FilePlan, Plan, ProgressFn, Summary, file_changes

LOCAL_BATCH = 128  # chunks per embedding call when the model does not say (sentence-transformers: fast)


@dataclass
class _Batch:
    ids: list[str]
    chunks: list[Chunk]
    vectors: list[Any | None]  # reused vectors filled in, None where the model must embed
    future: Future | None = None


@dataclass
class _Progress:
    total: int
    callback: ProgressFn | None
    done: int = 0
    embedded: int = 0
    reused: int = 0
    files_done: int = 0
    remaining: dict[int, int] = field(default_factory=dict)  # id(FilePlan) -> chunks not yet written


def apply_plan(
    plan: Plan,
    store: ChunkStore,
    embeddings: Any,
    records: Any,
    *,
    progress: ProgressFn | None = None,
    batch_size: int | None = None,
) -> Summary:
    """Write ``plan`` into ``store`` and ``records``."""
    dirty_roots = records.dirty_roots()
    if plan.has_writes:
        records.mark_dirty(plan.roots)
    for file, size, mtime_ns in plan.touched:
        records.touch(file.root, file.source, size=size, mtime_ns=mtime_ns, checked_ns=_now_ns())
    for skip in plan.new_skips:
        records.put(skip.file.root, skip.file.source, skip.sha, "", [], size=skip.size, mtime_ns=skip.mtime_ns,
                    checked_ns=_now_ns(), skip_reason=skip.reason)
    for root, source in plan.forget:
        records.delete(root, source)

    for entry in plan.relabel:  # same content, other readers: new labels, same vectors
        relabel_chunks(store, entry.ids, entry.access)
        records.set_access(entry.root, entry.source, entry.access, entry.front)

    todo = plan.added + plan.changed
    existing = set(store.get([i for entry in todo for i in entry.ids], texts=False, metadatas=False).ids)
    for entry in todo:  # chunks a file keeps (or a crashed run left) whose labels changed
        if entry.access is not None and entry.access != entry.old_access:
            relabel_chunks(store, [cid for cid in entry.ids if cid in existing], entry.access)
    state = _Progress(total=0, callback=progress)
    pending: list[tuple[str, Chunk, FilePlan]] = []
    for entry in todo:
        missing = [(cid, chunk) for cid, chunk in zip(entry.ids, entry.chunks) if cid not in existing]
        state.remaining[id(entry)] = len(missing)
        pending.extend((cid, chunk, entry) for cid, chunk in missing)
    state.total = len(pending)
    if progress:
        progress(0, state.total)
    for entry in todo:  # files whose chunks are all in already (a re-run after a crash)
        if state.remaining[id(entry)] == 0:
            _commit_file(entry, store, records, state)

    _write_chunks(pending, store, embeddings, records, state, batch_size=batch_size)

    deleted_chunks = sum(len(set(p.old_ids) - set(p.ids)) for p in plan.changed)
    for (root, source), ids in plan.deleted.items():
        store.delete(ids)
        records.delete(root, source)
        deleted_chunks += len(ids)
    if dirty_roots or plan.has_writes:
        deleted_chunks += _sweep_orphans(store, records, sorted(dirty_roots | set(plan.roots)))
        records.clear_dirty()
    return Summary(
        added=len(plan.added),
        changed=len(plan.changed),
        unchanged=len(plan.unchanged),
        deleted=len(plan.deleted),
        skipped=plan.skipped,
        chunks_embedded=state.embedded,
        chunks_deleted=deleted_chunks,
        chunks_total=store.count(),
        chunks_reused=state.reused,
        files=file_changes(plan),
        truncated=plan.truncated,
        relabelled=len(plan.relabel),
    )


def relabel_chunks(store: ChunkStore, ids: list[str], access: list[str], *, page: int = 500) -> int:
    """Give these chunks the access labels ``access`` (their text and vector are written back as they are:
    nothing is embedded); returns how many were rewritten."""
    done = 0
    for start in range(0, len(ids), page):
        got = store.get(ids[start : start + page], vectors=True)
        if not got.ids:
            continue
        metadatas = [{**(meta or {}), ACCESS_KEY: list(access), LABELLED_KEY: True} for meta in got.metadatas or []]
        store.upsert(got.ids, got.texts or [""] * len(got.ids), metadatas, got.vectors)
        done += len(got.ids)
    return done


def _write_chunks(pending, store: ChunkStore, embeddings, records, state: _Progress, *, batch_size: int | None) -> None:
    if not pending:
        return
    size = max(1, int(batch_size or getattr(embeddings, "ingest_batch_size", 0) or LOCAL_BATCH))
    workers = max(1, int(getattr(embeddings, "max_concurrency", 1) or 1))
    reuse = store.count() > 0
    in_flight: deque[tuple[_Batch, list[FilePlan]]] = deque()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kb-embed")
    failure: BaseException | None = None
    try:
        for start in range(0, len(pending), size):
            part = pending[start : start + size]
            batch = _Batch([cid for cid, _, _ in part], [chunk for _, chunk, _ in part], [None] * len(part))
            if reuse:
                _fill_reused(batch, store)
            todo = [i for i, v in enumerate(batch.vectors) if v is None]
            if todo:
                batch.future = executor.submit(_embed, embeddings, [batch.chunks[i].embedded for i in todo])
            in_flight.append((batch, [entry for _, _, entry in part]))
            while len(in_flight) > workers:  # keep the workers busy, hold at most one batch waiting
                _finish(in_flight.popleft(), store, records, state)
        while in_flight:
            _finish(in_flight.popleft(), store, records, state)
    except BaseException as exc:  # embedding failed for good, or Ctrl-C: keep what is done, then stop
        failure = exc
        for batch, _ in in_flight:
            if batch.future is not None:
                batch.future.cancel()
        if isinstance(exc, Exception):  # not Ctrl-C: let requests already running end, keep their vectors
            for item in in_flight:
                future = item[0].future
                if future is None or (not future.cancelled() and future.exception() is None):
                    try:
                        _finish(item, store, records, state)
                    except Exception:
                        pass
        in_flight.clear()
    finally:
        executor.shutdown(wait=failure is None, cancel_futures=True)
    if failure is not None:
        raise _after_partial_commit(failure, state)


def _embed(embeddings: Any, texts: list[str]) -> list[Any]:
    """Embed, folding identical texts in the batch into one input."""
    unique = list(dict.fromkeys(texts))
    vectors = embeddings.embed_documents(unique)
    if len(vectors) != len(unique):
        raise IngestError(f"the embedding model returned {len(vectors)} vectors for {len(unique)} texts")
    by_text = dict(zip(unique, vectors))
    return [by_text[text] for text in texts]


def _fill_reused(batch: _Batch, store: ChunkStore) -> None:
    wanted = {chunk.metadata["text_sha"] for chunk in batch.chunks}
    vectors = {}
    for page in store.scan(filter=Filter(any_of={"text_sha": sorted(wanted)}), texts=False, vectors=True):
        for vector, metadata in zip(page.vectors, page.metadatas or []):
            if metadata and metadata.get("text_sha"):
                vectors[metadata["text_sha"]] = vector
    for i, chunk in enumerate(batch.chunks):
        batch.vectors[i] = vectors.get(chunk.metadata["text_sha"])


def _finish(item: tuple[_Batch, list[FilePlan]], store: ChunkStore, records: Any, state: _Progress) -> None:
    batch, entries = item
    embedded = 0
    if batch.future is not None:
        computed = iter(batch.future.result())
        for i, vector in enumerate(batch.vectors):
            if vector is None:
                batch.vectors[i] = next(computed)
                embedded += 1
    store.upsert(batch.ids, [chunk.text for chunk in batch.chunks], [chunk.metadata for chunk in batch.chunks],
                 batch.vectors)
    state.embedded += embedded
    state.reused += len(batch.ids) - embedded
    state.done += len(batch.ids)
    if state.callback:
        state.callback(state.done, state.total)
    for entry in entries:
        state.remaining[id(entry)] -= 1
        if state.remaining[id(entry)] == 0:
            _commit_file(entry, store, records, state)


def _commit_file(entry: FilePlan, store: ChunkStore, records: Any, state: _Progress) -> None:
    records.put(entry.file.root, entry.file.source, entry.sha, entry.title, entry.ids, size=entry.size,
                mtime_ns=entry.mtime_ns, checked_ns=_now_ns(), chunks_total=entry.chunks_total,
                access=entry.access, front=entry.front)
    store.delete(sorted(set(entry.old_ids) - set(entry.ids)))
    state.files_done += 1


def _after_partial_commit(failure: BaseException, state: _Progress) -> BaseException:
    if not isinstance(failure, KbError):
        return failure  # KeyboardInterrupt and the like keep their meaning
    note = (f"{state.done} of {state.total} chunks were written and {state.files_done} files committed before "
            "the failure; run 'kb ingest' again to finish (nothing is lost or duplicated)")
    try:
        annotated = type(failure)(f"{failure.message}; {note}", hint=failure.hint)
    except TypeError:
        return failure
    return annotated


def _sweep_orphans(store: ChunkStore, records: Any, roots: list[Any]) -> int:
    """Delete chunks under ``roots`` that no record accounts for (left by an interrupted run)."""
    removed = 0
    for root in roots:
        expected = records.expected_ids(root)
        orphans = [i for i in all_ids(store, Filter(equals={"root": str(root)})) if i not in expected]
        store.delete(orphans)
        removed += len(orphans)
    return removed


def _now_ns() -> int:
    return time.time_ns()
