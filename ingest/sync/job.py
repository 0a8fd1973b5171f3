"""Keep the index in sync with folders of documents: the whole job of ``kb ingest``.

- ``ingest.sync.plan`` decides what changed; ``ingest.sync.writer`` applies it to the chunk store.
- Chunk ids are sha256 of (root, source, chunk number, text): a re-run cannot create duplicates.
- Records (``ingest.sync.records``) make re-runs incremental: a file whose size and mtime are unchanged
  is not even read (``checksum=True``, ``kb ingest --checksum``: every file is hashed instead), a file whose content hash is unchanged is not re-parsed, a changed file embeds
  only chunk ids that are new, a deleted file's chunks are removed, and an identical chunk text
  already in the index (a renamed or moved file, a shifted chunk) reuses its stored vector.
- Writes are ordered so that ``kill -9`` at any moment is safe (see ``ingest.sync.writer``); a run that
  did not finish leaves a mark, and the next one sweeps chunks no record accounts for.
- Files are parsed (loaded and split) in a child process under a time and memory limit when
  ``parse_limits`` is given (``ingest.sync.isolation``; the CLI always does): a file that exceeds them
  is skipped and reported, the run goes on. ``max_chunks`` (``KB_MAX_CHUNKS_PER_FILE``) keeps the
  first chunks of a file that has more, and reports it on every run until the cap or the file changes.
- One writer per index (``ingest.store.folder.writer_lock``); queries read a consistent index
  throughout (see ``ingest.store.chroma`` for ``--rebuild``). After the writes, the BM25 index and
  the query snapshot are brought in line with the store.
- Several roots live side by side: a run only deletes documents under the paths it was given. A
  path inside an already indexed root keeps that root; a new root that contains an indexed root
  takes its documents over (re-using their vectors).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.documents import DEFAULT_MAX_FILE_BYTES
from ingest.errors import UsageError
from ingest.store.chroma import activate, chroma_errors, collection_ids, connect, open_target, store_key
from ingest.store.folder import check_index_dir, writer_lock
from ingest.store.lexical import sync_lexical
from ingest.store.snapshot import sync_snapshot
from ingest.store.vector_search import delete_all, open_vector_store
from ingest.sync.isolation import ParseLimits, ParseWorker
from ingest.sync.plan import PhaseFn, ProgressFn, Summary, file_changes, make_plan, plan_summary
from ingest.sync.records import NoRecords, Records, records_path
from ingest.sync.writer import apply_plan
from ingest.volumes import VolumeSource, volume_path


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
    parse_limits: ParseLimits | None = None,
    checksum: bool = False,
    max_chunks: int | None = None,
    access_default: str = "all",
    vector_search: Any = None,
    workspace: Callable[[], Any] | None = None,
    notice: Callable[[str], None] | None = None,
    phase: PhaseFn | None = None,
) -> Summary:
    """Bring the index at ``index_dir`` (or on the Chroma server ``chroma_url``) in line with ``paths``.

    ``parse_limits``: parse files in a worker process under its time and memory limits (without
    it, in this process, unbounded). ``checksum``: hash every file instead of trusting size and
    modification time. ``max_chunks``: ``KB_MAX_CHUNKS_PER_FILE``. ``access_default``: ``KB_ACCESS_DEFAULT``
    (who may read a document no ``.kb-access`` rule covers: ``all`` or ``none``; see ``ingest.access``).
    ``vector_search``: an ``ingest.store.vector_search.VectorSearchConfig``: keep that Databricks Vector
    Search index in sync instead of Chroma. ``workspace``: makes the ``WorkspaceClient`` that Vector Search
    and ``/Volumes/...`` paths (``ingest.volumes``) use. ``notice``: one-line progress messages (waiting
    for the endpoint or index, volume downloads). ``phase``: (phase, done, total) as the run moves on:
    "opening" the index, "scanning", "reading" files, "lexical" (BM25 and snapshot); the embedding and
    writing in between are reported through ``progress``.
    """
    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    key = store_key(chroma_url) if vector_search is None else f"databricks:{vector_search.index}"
    with ExitStack() as stack:
        parser = None
        if parse_limits is not None:  # the child process starts only once a file needs parsing
            parser = stack.enter_context(ParseWorker(replace(parse_limits, max_bytes=max_bytes)))
        options = {"max_bytes": max_bytes, "exclude": [index_dir], "parser": parser, "checksum": checksum,
                   "max_chunks": max_chunks, "access_default": access_default, "phase": phase}
        if any(volume_path(p) is not None for p in paths):
            if workspace is None:
                raise UsageError("volume paths (/Volumes/...) need a Databricks workspace (DATABRICKS_HOST)")
            remote = VolumeSource(workspace(), index_dir, max_bytes=max_bytes, checksum=checksum, dry_run=dry_run)
            stack.callback(remote.close)
            options["remote"] = remote
        if dry_run:  # read-only: creates nothing, not even the index folder
            check_index_dir(index_dir, create=False)
            with closing(_read_only_records(index_dir, key, rebuild)) as records:
                return plan_summary(make_plan(paths, records, **options))
        if vector_search is not None:
            if workspace is None:
                raise UsageError("KB_VECTOR_STORE=databricks needs a Databricks workspace (DATABRICKS_HOST)")
            summary = _ingest_vector_search(paths, index_dir, embeddings, workspace(), vector_search, key, options,
                                            stack, rebuild=rebuild, progress=progress, batch_size=batch_size,
                                            notice=notice)
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary
        with writer_lock(index_dir), chroma_errors(chroma_url or str(index_dir)):
            if phase:
                phase("opening", 0, 0)
            client = connect(index_dir, chroma_url, create=True)
            target = open_target(client, embeddings, rebuild=rebuild, where=chroma_url or str(index_dir),
                                 index_dir=index_dir, local=not chroma_url)
            store = target.store(embeddings)
            with closing(Records(index_dir)) as records:
                records.adopt(target.id, key)
                records.purge(key, collection_ids(client) | {target.id})
                if not target.activate:
                    records.activate(key)
                plan = make_plan(paths, records, **options)
                stack.close()  # parsing is over: the worker process goes before embedding starts
                summary = apply_plan(plan, store, embeddings, records, progress=progress,
                                     batch_size=batch_size)
                if target.activate:  # a rebuild is complete: readers switch to it now
                    activate(target)
                    records.activate(key)
            summary.files = file_changes(plan)
            summary.truncated = plan.truncated
            summary.relabelled = len(plan.relabel)
            if phase:
                phase("lexical", 0, 0)
            sync_lexical(index_dir, store)  # BM25 index: same chunks as the store, rebuilt when they changed
            if not chroma_url:  # queries read this copy without importing chromadb (ingest/store/snapshot.py)
                sync_snapshot(index_dir, store)
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary


def _ingest_vector_search(paths: list[Path], index_dir: Path, embeddings: Any, client: Any, config: Any, key: str,
                          options: dict[str, Any], stack: ExitStack, *, rebuild: bool,
                          progress: ProgressFn | None, batch_size: int | None,
                          notice: Callable[[str], None] | None) -> Summary:
    """The same sync into a Databricks Vector Search index (``ingest.store.vector_search``).

    Records stay in ``KB_INDEX_DIR`` (keyed ``databricks:<index>``) under the same local writer lock.
    ``--rebuild`` empties the index first (there is no second generation to switch to: queries see it
    partial until the run ends). An index found empty while records describe it (deleted and created
    again) drops those records, so every file is written again."""
    with writer_lock(index_dir):
        store = open_vector_store(client, config, embeddings, create=True, notice=notice)
        with closing(Records(index_dir)) as records:
            records.adopt(key, key)
            if rebuild:
                delete_all(store, notice=notice)
            if rebuild or (records.roots() and store.count() == 0):
                records.purge(key, set())
                records.adopt(key, key)
            records.activate(key)
            plan = make_plan(paths, records, **options)
            stack.close()  # parsing is over: the worker process goes before embedding starts
            summary = apply_plan(plan, store, embeddings, records, progress=progress, batch_size=batch_size)
        summary.files = file_changes(plan)
        summary.truncated = plan.truncated
        summary.relabelled = len(getattr(plan, "relabel", []) or [])
        return summary


def _read_only_records(index_dir: Path, key: str, rebuild: bool) -> Records | NoRecords:
    if rebuild or not records_path(index_dir).exists():
        return NoRecords()
    records = Records(index_dir, collection="", read_only=True)
    records.collection = records.get_state(f"active:{key}") or ""
    return records
