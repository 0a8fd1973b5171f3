"""What the index holds, per file (``KB_INDEX_DIR/records.sqlite``); the writer lock is ``ingest.store.folder``.

``records.sqlite`` keeps, per (collection, root, source): the content sha256, size and mtime (so an
untouched file is not even re-read), the title and the chunk ids written for it, or the reason it
was skipped (so a broken file is not re-parsed until it changes). Rows are keyed by the Chroma
collection's id, so a rebuilt or recreated collection starts with no records, and records of an
embedded index never mix with those of a Chroma server.

The ``state`` table remembers the active collection per store and a "dirty" mark per collection
while a run writes to it: a run that died leaves the mark, and the next run sweeps orphans.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path


RECORDS_FILE = "records.sqlite"
# bump when loading, splitting or what is embedded changes: cached skips are retried and indexed
# files re-parsed (chunks whose embedded text is unchanged keep their ids and vectors)
LOADER_VERSION = 3  # 3: chunks embedded under their context header (ingest.split.Chunk.embedded)


def records_path(index_dir: Path) -> Path:
    return Path(index_dir) / RECORDS_FILE


@dataclass(frozen=True)
class Record:
    sha: str
    size: int
    mtime_ns: int
    checked_ns: int
    title: str
    ids: list[str]
    skip_reason: str | None
    version: int
    chunks_total: int | None = None  # set when KB_MAX_CHUNKS_PER_FILE cut the file: chunks it had in all
    access: list[str] | None = None  # the labels on its chunks (ingest.access); None: written before kb had them
    front: bool = False  # the labels come from the document's front matter (not from .kb-access)


class Records:
    """Records of one collection (``collection`` is its Chroma id; by default the collection the
    last ingest wrote, whatever its store)."""

    def __init__(self, index_dir: Path, collection: str | None = None, *, read_only: bool = False) -> None:
        self.path = records_path(index_dir)
        if read_only:  # create nothing: without a live writer (no -wal file), open the file as immutable
            live = self.path.with_name(self.path.name + "-wal").exists()
            uri = f"{self.path.resolve().as_uri()}?mode=ro" + ("" if live else "&immutable=1")
            self._db = sqlite3.connect(uri, uri=True, timeout=30)
            self.collection = collection if collection is not None else (self.get_state("active") or "")
            self._total_column = self._has_total_column()
            self._access_column = self._has_column("access")
            return
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("DROP TABLE IF EXISTS files")  # the first format, keyed by path only
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (collection TEXT NOT NULL, root TEXT NOT NULL, source TEXT NOT NULL,"
            " sha TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, checked_ns INTEGER NOT NULL,"
            " title TEXT NOT NULL, chunk_ids TEXT NOT NULL, skip_reason TEXT, version INTEGER NOT NULL,"
            " PRIMARY KEY (collection, root, source))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        if not self._has_total_column():  # added for KB_MAX_CHUNKS_PER_FILE; older files lack it
            self._db.execute("ALTER TABLE records ADD COLUMN chunks_total INTEGER")
        if not self._has_column("access"):  # added for access control: {"groups": [...], "front": bool}
            self._db.execute("ALTER TABLE records ADD COLUMN access TEXT")
        self._db.commit()
        self._total_column = True
        self._access_column = True
        self.collection = collection if collection is not None else (self.get_state("active") or "")

    def _has_total_column(self) -> bool:
        return self._has_column("chunks_total")

    def _has_column(self, name: str) -> bool:
        try:
            return any(row[1] == name for row in self._db.execute("PRAGMA table_info(records)"))
        except sqlite3.Error:
            return False

    # -- reading

    def roots(self) -> list[Path]:
        rows = self._db.execute("SELECT DISTINCT root FROM records WHERE collection = ?", (self.collection,))
        return [Path(root) for (root,) in rows]

    def for_root(self, root: Path) -> dict[str, Record]:
        total = "chunks_total" if self._total_column else "NULL"
        access = "access" if self._access_column else "NULL"
        rows = self._db.execute(
            "SELECT source, sha, size, mtime_ns, checked_ns, title, chunk_ids, skip_reason, version, "
            f"{total}, {access} FROM records WHERE collection = ? AND root = ?",
            (self.collection, str(root)),
        )
        found = {}
        for s, sha, size, m, c, t, ids, r, v, n, a in rows:
            labels, front = _access(a)
            found[s] = Record(sha, size, m, c, t, json.loads(ids), r, v, n, labels, front)
        return found

    def expected_ids(self, root: Path) -> set[str]:
        return {i for record in self.for_root(root).values() for i in record.ids}

    def documents(self) -> list[dict]:
        """``[{"root", "source", "title", "chunks", "access", "size", "checked_ns"}]``; ``access`` is the
        document's labels (``ingest.access``), ``None`` for a document recorded before kb had access
        control; ``checked_ns``: when ``kb ingest`` last indexed or confirmed it."""
        access = "access" if self._access_column else "NULL"
        rows = self._db.execute(
            f"SELECT root, source, title, chunk_ids, {access}, size, checked_ns FROM records"
            " WHERE collection = ? AND skip_reason IS NULL ORDER BY root, source",
            (self.collection,),
        )
        return [{"root": r, "source": s, "title": t, "chunks": len(json.loads(ids)), "access": _access(a)[0],
                 "size": size, "checked_ns": checked} for r, s, t, ids, a, size, checked in rows]

    # -- writing (each call is its own transaction: a crash never leaves half a record)

    def put(self, root: Path, source: str, sha: str, title: str, ids: list[str], *, size: int = -1,
            mtime_ns: int = 0, checked_ns: int = 0, skip_reason: str | None = None,
            chunks_total: int | None = None, access: list[str] | None = None, front: bool = False) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO records (collection, root, source, sha, size, mtime_ns, checked_ns, title,"
            " chunk_ids, skip_reason, version, chunks_total, access) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.collection, str(root), source, sha, size, mtime_ns, checked_ns, title, json.dumps(ids),
             skip_reason, LOADER_VERSION, chunks_total, _access_json(access, front)),
        )
        self._db.commit()

    def set_access(self, root: Path, source: str, access: list[str], front: bool) -> None:
        """Record new labels of a document whose chunks were re-labelled (content unchanged)."""
        self._db.execute(
            "UPDATE records SET access = ? WHERE collection = ? AND root = ? AND source = ?",
            (_access_json(access, front), self.collection, str(root), source),
        )
        self._db.commit()

    def touch(self, root: Path, source: str, *, size: int, mtime_ns: int, checked_ns: int) -> None:
        self._db.execute(
            "UPDATE records SET size = ?, mtime_ns = ?, checked_ns = ? WHERE collection = ? AND root = ? AND source = ?",
            (size, mtime_ns, checked_ns, self.collection, str(root), source),
        )
        self._db.commit()

    def delete(self, root: Path, source: str) -> None:
        self._db.execute(
            "DELETE FROM records WHERE collection = ? AND root = ? AND source = ?", (self.collection, str(root), source)
        )
        self._db.commit()

    def adopt(self, collection: str, store: str) -> None:
        """Make ``collection`` (of ``store``: "local" or a server URL) the one these records describe."""
        self.collection = collection
        self.set_state(f"store:{collection}", store)

    def activate(self, store: str) -> None:
        """Remember that readers of ``store`` now use this collection (and that it was written last)."""
        self.set_state(f"active:{store}", self.collection)
        self.set_state("active", self.collection)

    def purge(self, store: str, existing: set[str]) -> None:
        """Drop records of ``store``'s collections that no longer exist (replaced by a rebuild)."""
        rows = self._db.execute("SELECT key FROM state WHERE key LIKE 'store:%' AND value = ?", (store,)).fetchall()
        for (key,) in rows:
            collection = key.split(":", 1)[1]
            if collection not in existing:
                self._db.execute("DELETE FROM records WHERE collection = ?", (collection,))
                self._db.execute("DELETE FROM state WHERE key IN (?, ?)", (key, f"dirty:{collection}"))
        self._db.commit()

    # -- state

    def get_state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM state WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))
        self._db.commit()

    def dirty_roots(self) -> set[Path]:
        """Roots a run was writing when it stopped without finishing (their orphans need a sweep)."""
        value = self.get_state(f"dirty:{self.collection}")
        return {Path(root) for root in json.loads(value)} if value else set()

    def mark_dirty(self, roots: list[Path]) -> None:
        marked = sorted({str(r) for r in roots} | {str(r) for r in self.dirty_roots()})
        self.set_state(f"dirty:{self.collection}", json.dumps(marked))

    def clear_dirty(self) -> None:
        self.set_state(f"dirty:{self.collection}", None)

    def close(self) -> None:
        self._db.close()


def _access_json(access: list[str] | None, front: bool) -> str | None:
    return None if access is None else json.dumps({"groups": list(access), "front": bool(front)})


def _access(value: str | None) -> tuple[list[str] | None, bool]:
    if not value:
        return None, False
    try:
        data = json.loads(value)
        return [str(g) for g in data["groups"]], bool(data.get("front"))
    except (ValueError, KeyError, TypeError):
        return None, False


class NoRecords:
    """The records of an index that does not exist yet (dry runs before the first ingest)."""

    collection = ""

    def dirty_roots(self) -> set[Path]:
        return set()

    def roots(self) -> list[Path]:
        return []

    def for_root(self, root: Path) -> dict[str, Record]:
        return {}

    def close(self) -> None:
        pass
