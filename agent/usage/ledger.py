"""The local usage ledger: one SQLite row per model call, for ``kb usage`` and your own queries.

Where: ``KB_USAGE_LEDGER`` if set (a path, or ``off``), else ``<KB_INDEX_DIR>/usage.sqlite``.
Table ``calls``: ``ts`` (UTC, ISO 8601), ``kind`` (``chat`` | ``embeddings``), ``endpoint``,
``command`` (ask, chat, agent, ingest, eval, serve...), ``caller`` (behind ``kb serve``),
``usage_context`` (the JSON sent), ``prompt_tokens`` / ``completion_tokens`` (NULL = not
reported), ``latency_ms``, ``first_token_ms`` (streamed calls), ``status`` (``ok`` | ``error``),
``error`` (exception type and HTTP status only).

It never stores prompt or answer text, nor the token. Writers are safe to run concurrently (WAL
journal, one short transaction per row, busy timeout); a ledger that cannot be written (read-only
disk) logs one warning and never fails the command. Each ``Ledger`` keeps one connection open per
process (shared by its threads under a lock; reopened after a fork or if the file is replaced), so
recording a call costs well under a millisecond: opening and closing per row made SQLite checkpoint
the WAL on every close. ``synchronous=NORMAL`` (SQLite's advice for WAL): a power cut may lose the
last rows, never corrupt the file.

The schema is versioned (``PRAGMA user_version``) by numbered steps in ``MIGRATIONS``, applied in
order when a writer opens the file: a ledger from an earlier kb (including one written before
versioning, version 0) is upgraded in place with its rows; one from a later kb is never written to
(one warning) and ``kb usage`` refuses it with one line.

Chat models get a ``CallRecorder`` (a LangChain callback handler) from ``agent.databricks.llm.build_llm``;
Databricks embeddings get ``embeddings_recorder`` as their ``on_call`` hook. Both also log one INFO
line per call (``kb --verbose``), as structured fields with ``--log-json``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from agent.errors import KbError
from agent.settings import Settings
from agent.usage.tokens import usage_from_result

log = logging.getLogger("kb.usage")

FILENAME = "usage.sqlite"
OFF = ("off", "none", "false", "0", "disabled")

def _create_calls(connection: sqlite3.Connection) -> None:
    """Version 1: the ``calls`` table and its ``ts`` index (``IF NOT EXISTS``: a ledger written before
    versioning, at user_version 0, already has exactly this schema and is adopted as it is)."""
    connection.execute(
        """CREATE TABLE IF NOT EXISTS calls (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            command TEXT NOT NULL,
            caller TEXT,
            usage_context TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL NOT NULL,
            first_token_ms REAL,
            status TEXT NOT NULL,
            error TEXT
        )"""
    )
    connection.execute("CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts)")


# The schema's history, oldest first: step ``n`` (1-based) takes a ledger from version ``n - 1`` to
# ``n``; the version is SQLite's ``PRAGMA user_version``. Only ever append a step (never edit one that
# shipped): a ledger written by any earlier kb then opens in this one, and one written by a later kb
# (a version beyond this list) is refused instead of written to.
def _create_audit(connection: sqlite3.Connection) -> None:
    """Version 2: the ``audit`` table (access control): per API answer, search or document view, who
    asked (``caller``, their ``groups``), on which surface, and which sources they were shown; never the
    question, the passages or the answer."""
    connection.execute(
        """CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            caller TEXT NOT NULL,
            surface TEXT NOT NULL,
            groups TEXT NOT NULL,
            sources TEXT NOT NULL
        )"""
    )
    connection.execute("CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_calls, _create_audit)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "ts", "kind", "endpoint", "command", "caller", "usage_context", "prompt_tokens",
    "completion_tokens", "latency_ms", "first_token_ms", "status", "error",
)
_INSERT = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_INHERITED: list[sqlite3.Connection] = []  # connections a forked child got from its parent: never touched


class LedgerVersionError(KbError):
    """The ledger was written by a newer kb (a schema version this one does not know)."""


def schema_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _too_new(path: Path, version: int) -> LedgerVersionError:
    return LedgerVersionError(
        f"the usage ledger {path} was written by a newer kb (schema version {version}; this kb knows up to "
        f"{SCHEMA_VERSION})",
        hint="upgrade kb, or point KB_USAGE_LEDGER at another file",
    )


def migrate(connection: sqlite3.Connection, path: Path) -> int:
    """Bring the ledger behind ``connection`` (autocommit mode) to ``SCHEMA_VERSION``; its version.

    Steps run in one ``BEGIN IMMEDIATE`` transaction with the version bump, so concurrent writers
    migrate once and a failed step leaves the file as it was. A newer ledger is never touched.
    """
    version = schema_version(connection)
    if version == SCHEMA_VERSION:
        return version
    if version > SCHEMA_VERSION:
        raise _too_new(path, version)
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(connection)  # another process may have migrated meanwhile
        if version > SCHEMA_VERSION:
            raise _too_new(path, version)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[number - 1](connection)
            connection.execute(f"PRAGMA user_version = {number:d}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def iso_utc(moment: float | datetime) -> str:
    """The ledger's timestamp format (sorts as text): ``2025-01-31T12:00:00.123456Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger:
    """Append-only SQLite table of model calls at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._warned = False
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the connection has open

    def _open(self) -> sqlite3.Connection:
        """This process's connection (the caller holds the lock): opened, with the table, on first use;
        opened again if the file was removed or replaced, or in a child process after a fork."""
        connection = self._connection
        if connection is not None:
            if self._pid != os.getpid():
                _INHERITED.append(connection)  # SQLite forbids using or closing it after a fork: keep it
                connection = self._connection = None
            else:
                try:
                    stat = os.stat(self.path)
                    if (stat.st_dev, stat.st_ino) == self._file:
                        return connection
                except OSError:
                    pass
                self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=15, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout = 15000")
            if (version := schema_version(connection)) > SCHEMA_VERSION:
                raise _too_new(self.path, version)  # before anything writes to it (even the journal mode)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            migrate(connection, self.path)
            stat = os.stat(self.path)
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid, self._file = connection, os.getpid(), (stat.st_dev, stat.st_ino)
        return connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close this process's connection (the next ``record`` opens it again)."""
        with self._lock:
            self._close()

    def record(self, **row: Any) -> bool:
        """Append one row (missing columns are NULL); ``False`` (and one warning) if it cannot."""
        row.setdefault("ts", iso_utc(time.time()))
        context = row.get("usage_context")
        if not isinstance(context, str):
            row["usage_context"] = json.dumps(dict(context or {}), ensure_ascii=False, sort_keys=True)
        values = [row.get(column) for column in COLUMNS]
        try:
            with self._lock:
                try:
                    self._open().execute(_INSERT, values)  # autocommit: one short transaction
                except BaseException:
                    self._close()  # start afresh next time
                    raise
            return True
        except LedgerVersionError as exc:
            if not self._warned:
                self._warned = True
                log.warning("%s; model calls are not being recorded", exc)
            return False
        except (sqlite3.Error, OSError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("usage ledger %s cannot be written (%s); model calls are not being recorded", self.path, exc)
            return False

    def audit(self, *, caller: str, surface: str, groups: Any, sources: list[str]) -> bool:
        """Append one audit row (``_create_audit``); ``False`` (and one warning) if it cannot."""
        values = (iso_utc(time.time()), caller, surface, json.dumps(sorted(groups or [])),
                  json.dumps(list(dict.fromkeys(sources)), ensure_ascii=False))
        try:
            with self._lock:
                try:
                    self._open().execute(
                        "INSERT INTO audit (ts, caller, surface, groups, sources) VALUES (?, ?, ?, ?, ?)", values)
                except BaseException:
                    self._close()
                    raise
            return True
        except (LedgerVersionError, sqlite3.Error, OSError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("usage ledger %s cannot be written (%s); answers are not being audited", self.path, exc)
            return False

    def audit_rows(self) -> list[dict[str, Any]]:
        """Audit rows, oldest first (``sources`` and ``groups`` decoded); empty without a ledger."""
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=15)
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute("SELECT * FROM audit ORDER BY ts, id").fetchall()
        except sqlite3.Error:
            return []
        finally:
            connection.close()
        return [dict(row) | {"groups": json.loads(row["groups"]), "sources": json.loads(row["sources"])} for row in rows]

    def rows(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Rows (oldest first) since ``since``; empty when there is no ledger yet."""
        if not self.path.exists():
            return []
        try:
            connection = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=15)
            connection.row_factory = sqlite3.Row
            try:
                version = schema_version(connection)
                if version > SCHEMA_VERSION:
                    raise _too_new(self.path, version)
                if since is None:
                    cursor = connection.execute("SELECT * FROM calls ORDER BY ts, id")
                else:
                    cursor = connection.execute("SELECT * FROM calls WHERE ts >= ? ORDER BY ts, id", (iso_utc(since),))
                # an older ledger lacks the columns later steps add: they read as NULL
                return [dict.fromkeys(COLUMNS) | dict(row) for row in cursor]
            finally:
                connection.close()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return []
            raise KbError(f"cannot read the usage ledger {self.path}: {exc}", hint="check KB_USAGE_LEDGER") from None


def ledger_path(settings: Settings) -> Path | None:
    """``KB_USAGE_LEDGER`` (``None`` when ``off``), else ``<KB_INDEX_DIR>/usage.sqlite``."""
    value = (settings.usage_ledger or "").strip()
    if not value:
        return Path(settings.index_dir) / FILENAME
    if value.lower() in OFF:
        return None
    return Path(value).expanduser()


_OPEN: dict[str, Ledger] = {}
_OPEN_LOCK = threading.Lock()
MAX_OPEN = 8  # ledgers (paths) kept with an open connection; the least recently opened is closed


def open_ledger(settings: Settings) -> Ledger | None:
    """The configured ledger (one instance per path and process), or ``None`` when turned off."""
    path = ledger_path(settings)
    if path is None:
        return None
    key = str(path.resolve())
    with _OPEN_LOCK:
        ledger = _OPEN.pop(key, None) or Ledger(path)
        _OPEN[key] = ledger  # most recent last
        while len(_OPEN) > MAX_OPEN:  # e.g. many index dirs in one process (tests): keep few files open
            _OPEN.pop(next(iter(_OPEN))).close()  # still usable: it reopens on its next record
        return ledger


@atexit.register
def _close_all() -> None:
    with _OPEN_LOCK:
        for ledger in _OPEN.values():
            ledger.close()


def describe_error(error: BaseException) -> str:
    """Exception type and HTTP status only: never the message (it could quote a prompt)."""
    import asyncio

    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    status = getattr(error, "status_code", None) or getattr(getattr(error, "response", None), "status_code", None)
    name = type(error).__name__
    return f"{name} ({status})" if isinstance(status, int) else name


class _Call:
    __slots__ = ("started", "clock", "first_token")

    def __init__(self) -> None:
        self.started = time.time()
        self.clock = time.perf_counter()
        self.first_token: float | None = None


class CallRecorder(BaseCallbackHandler):
    """LangChain callback: one ledger row and one log line per chat model call."""

    def __init__(
        self,
        ledger: Ledger | None,
        *,
        endpoint: str,
        command: str,
        usage_context: Mapping[str, str],
        kind: str = "chat",
    ) -> None:
        super().__init__()
        self.ledger = ledger
        self.endpoint = endpoint
        self.command = command
        self.usage_context = dict(usage_context)
        self.kind = kind
        self._calls: dict[UUID, _Call] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: UUID) -> None:
        with self._lock:
            self._calls[run_id] = _Call()

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.get(run_id)
        if call is not None and call.first_token is None:
            call.first_token = time.perf_counter()

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, usage_from_result(response), "ok", None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        partial = kwargs.get("response")
        usage = usage_from_result(partial) if isinstance(partial, LLMResult) else None
        self._finish(run_id, usage, "error", describe_error(error))

    def _finish(self, run_id: UUID, usage: tuple[int, int] | None, status: str, error: str | None) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None) or _Call()
        now = time.perf_counter()
        record_call(
            self.ledger,
            kind=self.kind,
            endpoint=self.endpoint,
            command=self.command,
            usage_context=self.usage_context,
            started=call.started,
            latency_ms=(now - call.clock) * 1000,
            first_token_ms=(call.first_token - call.clock) * 1000 if call.first_token else None,
            prompt_tokens=usage[0] if usage else None,
            completion_tokens=usage[1] if usage else None,
            status=status,
            error=error,
        )


def record_call(
    ledger: Ledger | None,
    *,
    kind: str,
    endpoint: str,
    command: str,
    usage_context: Mapping[str, str],
    started: float,
    latency_ms: float,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    status: str,
    error: str | None = None,
    first_token_ms: float | None = None,
) -> None:
    """Log the call (INFO, structured) and append it to the ledger if there is one."""
    caller = usage_context.get("caller")
    fields = {
        "event": "model_call", "kind": kind, "endpoint": endpoint, "command": command, "caller": caller,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "latency_ms": round(latency_ms, 1), "status": status, "error": error,
    }
    tokens = (
        f"{prompt_tokens} prompt + {completion_tokens} completion tokens"
        if prompt_tokens is not None and completion_tokens is not None
        else "tokens not reported"
    )
    log.info(
        "%s call to %s (%s%s): %s, %.0f ms, %s",
        kind, endpoint, command, f", caller {caller}" if caller else "", tokens, latency_ms,
        status if not error else f"{status}: {error}", extra=fields,
    )
    if ledger is not None:
        ledger.record(
            ts=iso_utc(started), kind=kind, endpoint=endpoint, command=command, caller=caller,
            usage_context=usage_context, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            latency_ms=round(latency_ms, 3), first_token_ms=round(first_token_ms, 3) if first_token_ms else None,
            status=status, error=error,
        )


def chat_recorder(settings: Settings, *, endpoint: str, command: str, usage_context: Mapping[str, str]) -> CallRecorder:
    return CallRecorder(open_ledger(settings), endpoint=endpoint, command=command, usage_context=usage_context)


def embeddings_recorder(
    settings: Settings, *, endpoint: str, command: str, usage_context: Mapping[str, str]
) -> Callable[[dict[str, Any]], None]:
    """The ``on_call`` hook for ``ingest.embeddings.databricks.DatabricksEmbeddings``: one row per request.

    The hook receives ``{"started", "latency_ms", "inputs", "prompt_tokens", "status", "error"}``.
    """
    ledger = open_ledger(settings)
    context = dict(usage_context)

    def on_call(event: dict[str, Any]) -> None:
        try:
            record_call(
                ledger,
                kind="embeddings",
                endpoint=endpoint,
                command=command,
                usage_context=context,
                started=float(event.get("started") or time.time()),
                latency_ms=float(event.get("latency_ms") or 0.0),
                prompt_tokens=event.get("prompt_tokens"),
                completion_tokens=0 if event.get("prompt_tokens") is not None else None,
                status=str(event.get("status") or "ok"),
                error=event.get("error"),
            )
        except Exception:  # recording must never break an embedding call
            log.debug("could not record an embeddings call", exc_info=True)

    return on_call
