"""The Databricks Vector Search adapter: a ``ChunkStore`` over a Mosaic AI Vector Search index, through the
databricks-sdk (``WorkspaceClient.vector_search_endpoints`` / ``.vector_search_indexes``). The only module
that knows Vector Search; the caller (``agent/``) builds the ``WorkspaceClient`` and passes it in.

Two kinds of index:

- **Direct Vector Access** (kb writes it, ``kb ingest``): created on first ingest if missing, with the
  schema ``SCHEMA`` (primary key ``id``; ``text``; the filterable metadata ``source``, ``root``,
  ``title``, ``section``, ``page``, ``chunk``, ``text_sha``; the whole metadata as JSON in ``metadata``;
  the vector ``vector`` of the embedding model's dimension). The endpoint (``KB_VS_ENDPOINT``) is created
  too when missing (STANDARD) and waited for until ONLINE, then the index until ready.
- **Delta Sync** (someone else maintains it; ``KB_VS_READ_ONLY=1``): only queried. Its column names are
  configurable (``VectorSearchConfig.columns``: ``id``, ``text``, ``vector``, ``source``, ``title``,
  ``section``, ``page``); an index that computes its own embeddings is queried with ``query_text``.

Mapping of the ``ChunkStore`` calls:

- ``nearest`` -> ``query_index(query_type="ANN", query_vector=...)``; the vector column is returned too and
  hits are ranked by exact cosine (``Hit.distance = 1 - cosine``), whatever metric the index uses;
- ``search`` (kb's retriever uses it instead of fusing locally) -> ``ANN`` / ``HYBRID`` / ``FULL_TEXT``;
- ``lexical`` -> a ``FULL_TEXT`` query; an index without full-text search is one clear ``UsageError``;
- ``Filter`` -> ``filters_json`` (``equals`` -> ``{"source": "a.md"}``, ``any_of`` -> ``{"text_sha": [...]}``,
  ``readable_by`` -> ``{"access": ["*", "hr"]}``: a list value on the ``ARRAY<STRING>`` column ``access``
  means "contains any of", so the service ranks only readable rows and the top k is full of them);
  ``source_prefix`` has no portable operator (``LIKE`` differs between endpoint types): it is applied to
  the results, with the query widened (``num_results`` x4) to make up for what it removes. Every row
  returned is checked with ``Filter.matches`` too, so nothing unreadable leaks whatever the service did;
- access control (``ingest.access``): every row kb writes carries its readers in ``access`` (``["*"]``
  for everyone). A Direct Vector Access index created before kb had the column cannot filter: a query
  with ``readable_by`` on it is refused (one line: ``kb ingest --rebuild``, which recreates the index
  with the column, or a new ``KB_VS_INDEX``), never filtered after the top k. A Delta Sync index names its
  readers column in ``KB_VS_COLUMNS`` (``{"access": "readers"}``); without one its rows carry no labels
  and read as everyone's (like chunks indexed before access control), which is logged once when callers
  with groups query it;
- ``get`` -> a query filtered on the primary key (Vector Search has no get-by-key call);
- ``scan`` -> ``scan_index`` pages (``last_primary_key``), filtered here; a filter on a long list of ids
  or ``text_sha`` (the writer looking for vectors to reuse) is a filtered query instead of a full scan;
- ``upsert`` -> ``upsert_data_vector_index`` in batches of at most ``UPSERT_ROWS`` rows and
  ``UPSERT_BYTES`` bytes of JSON; ``delete`` -> ``delete_data_vector_index`` with at most
  ``DELETE_KEYS`` keys (they travel in the URL). A batch the service reports as failed is an error.

Retries: the SDK's own client retries 429 and 503 honouring ``Retry-After`` (within its
``retry_timeout_seconds``); this adapter also retries 500, 502 and 504 (``max_retries`` times, with
backoff). Writes are by primary key, so a repeat is harmless.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.errors import EmbeddingMismatchError, IndexMissingError, IndexUnusableError, KbError, UsageError
from ingest.store.base import PAGE, Chunks, Filter, Hit, ReadOnlyStoreError, in_order

# Limits kept under the documented ones (verified against the documented protocol only, see README).
UPSERT_ROWS = 500
UPSERT_BYTES = 4 * 1024 * 1024
DELETE_KEYS = 100  # primary keys travel in the query string of a DELETE
LOOKUP_KEYS = 100  # ids per filtered lookup query
SCAN_PAGE = 100  # rows per scan_index call
MAX_RESULTS = 1000  # num_results of one query
RETRYABLE = (500, 502, 504)  # 429 and 503 are the SDK's own
METADATA_COLUMNS = ("source", "root", "title", "section", "page", "chunk", "text_sha")
ACCESS = "access"  # the readers column (ARRAY<STRING>): the chunk's ``access`` labels, ``["*"]`` for everyone
SCHEMA = {"id": "string", "text": "string", "source": "string", "root": "string", "title": "string",
          "section": "string", "page": "int", "chunk": "int", "text_sha": "string", "metadata": "string",
          ACCESS: "array<string>", "vector": "array<float>"}
DEFAULT_COLUMNS = {"id": "id", "text": "text", "vector": "vector", "metadata": "metadata", ACCESS: ACCESS,
                   **{name: name for name in METADATA_COLUMNS}}
_INDEX_NAME = re.compile(r"\A[^.\s`]+\.[^.\s`]+\.[^.\s`]+\Z")
log = logging.getLogger("kb.store")


@dataclass(frozen=True)
class VectorSearchConfig:
    """Where the index is and how to read it (``KB_VS_INDEX``, ``KB_VS_ENDPOINT``, ``KB_VS_READ_ONLY``,
    ``KB_VS_COLUMNS``)."""

    index: str | None
    endpoint: str | None = None
    read_only: bool = False
    columns: Mapping[str, str] = field(default_factory=dict)  # kb name -> the index's column name
    max_retries: int = 3
    wait_seconds: float = 1800.0  # how long to wait for an endpoint / index to come online
    poll_seconds: float = 5.0
    backoff_seconds: float = 0.5

    def column(self, name: str) -> str:
        return self.columns.get(name) or DEFAULT_COLUMNS[name]

    def checked(self) -> VectorSearchConfig:
        """Itself, or one ``UsageError`` naming the setting that is missing or wrong."""
        if not self.index:
            raise UsageError("KB_VS_INDEX is not set: KB_VECTOR_STORE=databricks needs the index's full name",
                             hint="set KB_VS_INDEX=catalog.schema.name")
        if not _INDEX_NAME.fullmatch(self.index):
            raise UsageError(f"KB_VS_INDEX={self.index} is not a full index name catalog.schema.name")
        unknown = sorted(set(self.columns) - set(DEFAULT_COLUMNS))
        if unknown:
            raise UsageError(f"KB_VS_COLUMNS names unknown columns {', '.join(unknown)}: use "
                             f"{', '.join(DEFAULT_COLUMNS)}")
        return self


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (its class tells it)."""
    from databricks.sdk import errors

    for status, kind in ((404, errors.NotFound), (403, errors.PermissionDenied), (401, errors.Unauthenticated),
                         (409, errors.ResourceConflict), (400, errors.BadRequest), (429, errors.TooManyRequests),
                         (503, errors.TemporarilyUnavailable), (504, errors.DeadlineExceeded),
                         (500, errors.InternalError)):
        if isinstance(exc, kind):
            return status
    code = str(getattr(exc, "error_code", "") or "")
    if code in ("BAD_GATEWAY",) or "502" in str(exc)[:40]:
        return 502
    return None


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] or type(exc).__name__


class VectorSearchChunkStore:
    """``ChunkStore`` over one Vector Search index (see the module docstring)."""

    def __init__(self, client: Any, config: VectorSearchConfig, embeddings: Any, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.config = config.checked()
        self.embeddings = embeddings
        self.index = str(config.index)
        self._sleep = sleep
        self._info: Any = None
        self._described = 0.0
        self.read_only = config.read_only
        self.upsert_calls: list[tuple[int, int]] = []  # (rows, bytes) per upsert request: what ingest sent
        self.delete_calls: list[int] = []
        self._warned_unlabelled = False

    # ------------------------------------------------------------ calls

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn`` with 500/502/504 retried (429/503 are retried inside the SDK), and SDK errors as kb's."""
        from databricks.sdk.errors import DatabricksError

        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except DatabricksError as exc:
                status = _status(exc)
                if status in RETRYABLE and attempt < self.config.max_retries:
                    wait = getattr(exc, "retry_after_secs", None)
                    self._sleep(float(wait) if wait is not None else self.config.backoff_seconds * 2 ** attempt)
                    attempt += 1
                    continue
                raise self._error(what, exc, status) from None
            except TimeoutError as exc:  # the SDK's retries of 429/503 ran out of time
                raise IndexUnusableError(
                    f"Vector Search kept refusing {what} on {self.index} (throttled or unavailable: {_one_line(exc)})",
                    hint="try again later, or lower KB_EMBEDDING_CONCURRENCY") from None
            except OSError as exc:  # connection refused, DNS: requests' errors are OSErrors
                raise IndexUnusableError(f"cannot reach Vector Search for {what} on {self.index} ({_one_line(exc)})",
                                         hint="check DATABRICKS_HOST and the network") from None

    def _error(self, what: str, exc: BaseException, status: int | None) -> KbError:
        detail = _one_line(exc)
        if status == 404:
            return IndexMissingError(f"Vector Search index KB_VS_INDEX={self.index} does not exist ({detail})",
                                     hint="run 'kb ingest' to create it, or fix KB_VS_INDEX")
        if status in (401, 403):
            return IndexUnusableError(f"not allowed to {what} on Vector Search index {self.index} ({detail})",
                                      hint="ask for SELECT on the index (queries) or MODIFY (kb ingest)")
        return IndexUnusableError(f"Vector Search failed to {what} on {self.index} ({detail})")

    # ------------------------------------------------------------ description

    def describe(self, *, fresh: bool = False) -> Any:
        now = time.monotonic()
        if fresh or self._info is None or now - self._described > 1.0:
            self._info = self._call("describe the index", self.client.vector_search_indexes.get_index, self.index)
            self._described = now
        return self._info

    @property
    def direct(self) -> bool:
        kind = getattr(self.describe().index_type, "value", None)
        return kind == "DIRECT_ACCESS"

    @property
    def computes_embeddings(self) -> bool:
        """A Delta Sync index with a model endpoint: queried with ``query_text``, no vectors of kb's."""
        spec = self.describe().delta_sync_index_spec
        return bool(spec and spec.embedding_source_columns and not spec.embedding_vector_columns)

    @property
    def needs_query_vector(self) -> bool:
        return not self.computes_embeddings

    @property
    def model_id(self) -> str:
        return str(getattr(self.embeddings, "model_id", type(self.embeddings).__name__))

    @property
    def dimension(self) -> int | None:
        info = self.describe()
        for spec in (info.direct_access_index_spec, info.delta_sync_index_spec):
            for column in (spec.embedding_vector_columns or []) if spec else []:
                if column.embedding_dimension:
                    return int(column.embedding_dimension)
        return None

    def _vector_column(self) -> str | None:
        return None if self.computes_embeddings else self.config.column("vector")

    def _schema(self) -> dict[str, Any]:
        """A Direct Vector Access index's ``schema_json`` (``{}``: not a direct index, or not told)."""
        spec = self.describe().direct_access_index_spec
        if spec is None or not spec.schema_json:
            return {}
        try:
            schema = json.loads(spec.schema_json)
        except ValueError:
            return {}
        return schema if isinstance(schema, dict) else {}

    def _has_metadata_column(self) -> bool:
        return self.config.column("metadata") in self._schema()

    @property
    def access_column(self) -> str | None:
        """The readers column (``ARRAY<STRING>``) a ``readable_by`` filter goes to, or ``None`` when the
        index has none: a Direct Vector Access index created before kb wrote it (its schema, when the
        service tells it, lacks the column), a Delta Sync index without ``access`` in ``KB_VS_COLUMNS``."""
        if self.direct:
            schema, name = self._schema(), self.config.column(ACCESS)
            return name if not schema or name in schema else None  # schema untold: kb's own (a wrong guess fails closed)
        return self.config.columns.get(ACCESS) or None

    def _access_filter(self, filter: Filter | None) -> dict[str, list[str]]:
        """``readable_by`` as a ``filters_json`` condition on the readers column (``{}``: no restriction).
        An index without the column cannot restrict a query: a Direct Vector Access index kb wrote is
        refused in one line (filtering after the top k would leave it short of readable chunks); a Delta
        Sync index without a mapped column has no labels, so its rows are everyone's (logged once)."""
        allowed = getattr(filter, "readable_by", None)
        if allowed is None:
            return {}
        column = self.access_column
        if column is not None:
            return {column: sorted(allowed)}
        if self.direct:
            raise IndexUnusableError(
                f"Vector Search index {self.index} has no '{ACCESS}' column, so kb cannot limit results to what "
                f"the caller may read: run 'kb ingest --rebuild' (it recreates the index with the column) or set a "
                f"new KB_VS_INDEX")
        if not self._warned_unlabelled and set(allowed) - {"*"}:
            self._warned_unlabelled = True
            log.warning("Vector Search index %s has no access column (KB_VS_COLUMNS names none): its rows carry no "
                        "readers, so every caller reads every row; map its ARRAY<STRING> readers column with "
                        'KB_VS_COLUMNS {"access": "<column>"}', self.index)
        return {}

    def _columns(self, *, vectors: bool) -> list[str]:
        names = [self.config.column("id"), self.config.column("text")]
        if self._has_metadata_column():
            names.append(self.config.column("metadata"))
        else:
            names += [self.config.column(name) for name in METADATA_COLUMNS if name in self.config.columns
                      or self.direct]
        access = self.access_column
        if access is not None:
            names.append(access)
        vector = self._vector_column()
        if vectors and vector:
            names.append(vector)
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------ reading

    def count(self) -> int:
        status = self.describe(fresh=True).status
        rows = int(getattr(status, "indexed_row_count", None) or 0)
        if rows == 0:  # indexing is asynchronous: rows written a moment ago may not be counted yet
            probe = self._call("scan the index", self.client.vector_search_indexes.scan_index, self.index,
                               num_results=1)
            rows = len(probe.data or [])
        return rows

    def get(self, ids: Sequence[str], *, texts: bool = True, metadatas: bool = True,
            vectors: bool = False) -> Chunks:
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[Any, Any, Any]] = {}
        for start in range(0, len(unique), LOOKUP_KEYS):
            part = unique[start : start + LOOKUP_KEYS]
            for row in self._lookup({self.config.column("id"): part}, len(part), vectors=vectors):
                found[row["id"]] = (row["text"], row["metadata"], row.get("vector"))
        return in_order(unique, found, texts=texts, metadatas=metadatas, vectors=vectors)

    def _probe_vector(self) -> list[float]:
        dimension = self.dimension or len(self.embeddings.embed_query("kb"))
        return [1.0] + [0.0] * (dimension - 1)

    def _lookup(self, filters: dict[str, Any], n: int, *, vectors: bool) -> list[dict[str, Any]]:
        """Rows matching ``filters`` exactly (a query whose ranking does not matter)."""
        if self.computes_embeddings:
            return self._query("FULL_TEXT", text=" ", vector=None, n=n, filters=filters, vectors=vectors)[0]
        return self._query("ANN", text=None, vector=self._probe_vector(), n=n, filters=filters, vectors=vectors)[0]

    def _query(self, query_type: str, *, text: str | None, vector: Sequence[float] | None, n: int,
               filters: dict[str, Any] | None, vectors: bool) -> tuple[list[dict[str, Any]], list[float]]:
        """Rows (id, text, metadata, vector) and the service's scores, best first; pages followed."""
        api = self.client.vector_search_indexes
        kwargs: dict[str, Any] = {"columns": self._columns(vectors=vectors), "num_results": max(1, min(n, MAX_RESULTS)),
                                  "query_type": query_type}
        if filters:
            kwargs["filters_json"] = json.dumps(filters, ensure_ascii=False)
        if vector is not None:
            kwargs["query_vector"] = [float(x) for x in vector]
        if text is not None:
            kwargs["query_text"] = text
        response = self._call("query", api.query_index, self.index, **kwargs)
        rows: list[dict[str, Any]] = []
        scores: list[float] = []
        pages = 0
        while True:
            self._rows(response, rows, scores)
            token = getattr(response, "next_page_token", None)
            pages += 1
            if not token or len(rows) >= n or pages >= 100:
                break
            response = self._call("query", api.query_next_page, self.index, endpoint_name=self.config.endpoint,
                                  page_token=token)
        return rows[:n], scores[:n]

    def _rows(self, response: Any, rows: list[dict[str, Any]], scores: list[float]) -> None:
        columns = [c.name for c in ((response.manifest.columns or []) if response.manifest else [])]
        for values in (response.result.data_array or []) if response.result else []:
            record = dict(zip(columns, values))
            rows.append(self._chunk(record))
            score = record.get("score")
            scores.append(float(score) if isinstance(score, (int, float, str)) and _is_number(score) else 0.0)

    def _chunk(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A row of the index as (id, text, metadata, vector)."""
        column = self.config.column
        metadata: dict[str, Any] = {}
        raw = record.get(column("metadata"))
        if isinstance(raw, str) and raw:
            try:
                loaded = json.loads(raw)
                metadata = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                metadata = {}
        for name in METADATA_COLUMNS:
            value = record.get(column(name))
            if name not in metadata and value is not None and value != "":
                metadata[name] = int(value) if name in ("page", "chunk") and _is_number(value) else value
        labels = _labels(record.get(column(ACCESS)))
        if labels is not None:  # the column is what the service filtered on: it is the chunk's readers
            metadata[ACCESS] = labels
        vector = record.get(column("vector"))
        if isinstance(vector, str):  # some responses carry arrays as JSON text
            try:
                vector = json.loads(vector)
            except ValueError:
                vector = None
        return {"id": str(record.get(column("id"))), "text": str(record.get(column("text")) or ""),
                "metadata": metadata, "vector": vector}

    def nearest(self, vector: Sequence[float], k: int, *, filter: Filter | None = None) -> list[Hit]:
        return [hit for hit, _ in self.search("", vector, k, mode="dense", filter=filter)]

    def search(self, query: str, vector: Sequence[float] | None, k: int, *, mode: str = "dense",
               filter: Filter | None = None) -> list[tuple[Hit, float]]:
        """The ``k`` best chunks for ``mode`` (``dense`` -> ANN, ``hybrid`` -> HYBRID, ``bm25`` -> FULL_TEXT),
        each with the service's score (``dense``: the cosine). ``Hit.distance`` is ``1 - cosine`` when the
        vectors are known, else ``1 - score``."""
        if k <= 0:
            return []
        query_type = {"dense": "ANN", "hybrid": "HYBRID", "bm25": "FULL_TEXT"}[mode]
        if self.computes_embeddings:
            vector = None
            text: str | None = query or " "
        else:
            text = query if mode != "dense" else None
            if vector is None and mode != "bm25":
                vector = self.embeddings.embed_query(query)
        widen = 4 if filter is not None and filter.source_prefix is not None else 1
        try:
            rows, scores = self._query(query_type, text=text, vector=vector if mode != "bm25" else None,
                                       n=k * widen, filters=self._filters(filter), vectors=True)
        except IndexUnusableError as exc:
            if mode != "dense" and ("FULL_TEXT" in exc.message or "HYBRID" in exc.message or "query_type" in exc.message
                                    or "full-text" in exc.message.lower() or "not supported" in exc.message.lower()):
                raise UsageError(f"--mode {mode} needs Vector Search's {query_type} queries, which index {self.index} "
                                 f"does not offer ({exc.message})", hint="use --mode dense (KB_SEARCH_MODE=dense)") from None
            raise
        query_vector = vector
        hits: list[tuple[Hit, float, int]] = []
        for rank, (row, score) in enumerate(zip(rows, scores)):
            if filter is not None and not filter.matches(row["metadata"]):
                continue
            cosine = _cosine(query_vector, row["vector"]) if query_vector is not None else None
            distance = 1.0 - cosine if cosine is not None else 1.0 - score
            hits.append((Hit(row["id"], distance, row["text"], row["metadata"]),
                         cosine if mode == "dense" and cosine is not None else score, rank))
        if mode == "dense":  # exact cosine order over the candidates; ties keep the service's order
            hits.sort(key=lambda item: (item[0].distance, item[2]))
        return [(hit, score) for hit, score, _ in hits[:k]]

    def lexical(self, query: str, *, filter: Filter | None = None) -> _RemoteLexical:
        return _RemoteLexical(self, query, filter)

    def scan(self, *, filter: Filter | None = None, texts: bool = True, metadatas: bool = True,
             vectors: bool = False, page_size: int = PAGE) -> Iterator[Chunks]:
        access = self._access_filter(filter)  # refused here too on an index that cannot filter by readers
        selective = filter is not None and filter.any_of and not filter.equals and filter.source_prefix is None \
            and len(filter.any_of) == 1
        if selective:  # e.g. the writer's vectors to reuse: a filtered query, not a scan of the whole index
            (key, values), = filter.any_of.items()
            values = list(dict.fromkeys(values))
            for start in range(0, len(values), LOOKUP_KEYS):
                part = values[start : start + LOOKUP_KEYS]
                rows = self._lookup({self.config.column(key) if key in DEFAULT_COLUMNS else key: part, **access},
                                    MAX_RESULTS, vectors=vectors)
                rows = [row for row in rows if filter.matches(row["metadata"] | {"id": row["id"]})]
                if rows:
                    yield _chunks(rows, texts, metadatas, vectors)
            return
        buffer: list[dict[str, Any]] = []
        for row in self._scan_rows():
            if filter is None or filter.matches(row["metadata"]):
                buffer.append(row)
                if len(buffer) >= page_size:
                    yield _chunks(buffer, texts, metadatas, vectors)
                    buffer = []
        if buffer:
            yield _chunks(buffer, texts, metadatas, vectors)

    def _scan_rows(self) -> Iterator[dict[str, Any]]:
        last: str | None = None
        while True:
            response = self._call("scan the index", self.client.vector_search_indexes.scan_index, self.index,
                                  last_primary_key=last, num_results=SCAN_PAGE)
            data = response.data or []
            for struct in data:
                yield self._chunk({entry.key: _value(entry.value) for entry in (struct.fields or [])})
            if not data or not response.last_primary_key or response.last_primary_key == last:
                return
            last = response.last_primary_key

    def _filters(self, filter: Filter | None) -> dict[str, Any] | None:
        if filter is None or filter.empty:
            return None
        result: dict[str, Any] = dict(self._access_filter(filter))
        for key, value in filter.equals.items():
            result[self.config.column(key) if key in DEFAULT_COLUMNS else key] = value
        for key, values in filter.any_of.items():
            result[self.config.column(key) if key in DEFAULT_COLUMNS else key] = list(values)
        for key, values in _extra_conditions(filter).items():
            result[key] = values
        return result or None

    # ------------------------------------------------------------ writing

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"Vector Search index {self.index} is read-only here (KB_VS_READ_ONLY=1)",
                                     hint="unset KB_VS_READ_ONLY to let 'kb ingest' write a Direct Vector Access index")

    def upsert(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
               vectors: Sequence[Sequence[float]]) -> None:
        self._writable()
        batch: list[str] = []
        size = 2
        labelled = self.access_column is not None  # an index created before the column: rows without it
        for cid, text, meta, vector in zip(ids, texts, metadatas, vectors, strict=True):
            row = json.dumps(self._row(cid, text, meta, vector, labelled=labelled), ensure_ascii=False)
            if batch and (len(batch) >= UPSERT_ROWS or size + len(row) + 1 > UPSERT_BYTES):
                self._upsert(batch, size)
                batch, size = [], 2
            batch.append(row)
            size += len(row.encode("utf-8")) + 1
        if batch:
            self._upsert(batch, size)

    def _row(self, cid: str, text: str, meta: Mapping[str, Any], vector: Sequence[float], *,
             labelled: bool = True) -> dict[str, Any]:
        row: dict[str, Any] = {"id": cid, "text": text, "metadata": json.dumps(dict(meta), ensure_ascii=False)}
        for name in METADATA_COLUMNS:
            value = meta.get(name)
            if name in ("page", "chunk"):
                row[name] = int(value) if _is_number(value) else None
            else:
                row[name] = "" if value is None else str(value)
        if labelled:
            row[ACCESS] = _row_labels(meta)
        row["vector"] = [float(x) for x in (vector.tolist() if hasattr(vector, "tolist") else vector)]
        return row

    def _upsert(self, rows: list[str], size: int) -> None:
        body = "[" + ",".join(rows) + "]"
        self.upsert_calls.append((len(rows), len(body.encode("utf-8"))))
        response = self._call("upsert", self.client.vector_search_indexes.upsert_data_vector_index, self.index, body)
        self._check_write("upsert", response, len(rows))

    def delete(self, ids: Sequence[str]) -> None:
        self._writable()
        keys = list(dict.fromkeys(ids))
        for start in range(0, len(keys), DELETE_KEYS):
            part = keys[start : start + DELETE_KEYS]
            self.delete_calls.append(len(part))
            response = self._call("delete", self.client.vector_search_indexes.delete_data_vector_index, self.index,
                                  part)
            self._check_write("delete", response, len(part))

    def _check_write(self, what: str, response: Any, n: int) -> None:
        status = getattr(getattr(response, "status", None), "value", None)
        result = getattr(response, "result", None)
        failed = list(getattr(result, "failed_primary_keys", None) or [])
        if status in (None, "SUCCESS") and not failed:
            return
        raise IndexUnusableError(
            f"Vector Search reported {status or 'FAILURE'} for {what} of {n} rows on {self.index}"
            + (f" ({len(failed)} failed, e.g. {failed[0][:60]})" if failed else ""),
            hint="run 'kb ingest' again (writes are idempotent)")


class _RemoteLexical:
    """BM25's place for Vector Search: a FULL_TEXT query, run when first asked."""

    def __init__(self, store: VectorSearchChunkStore, query: str, filter: Filter | None) -> None:
        self.store, self.query, self.filter = store, query, filter
        self._ranked: list[tuple[str, float]] | None = None

    def top(self, n: int) -> list[tuple[str, float]]:
        if self._ranked is None or len(self._ranked) < n:
            hits = self.store.search(self.query, None, n, mode="bm25", filter=self.filter)
            self._ranked = [(hit.id, score) for hit, score in hits]
        return [(cid, score) for cid, score in self._ranked[:n] if score > 0]

    def score_and_rank(self, chunk_id: str) -> tuple[float, int | None]:
        for rank, (cid, score) in enumerate(self._ranked or [], 1):
            if cid == chunk_id:
                return score, rank
        return 0.0, None


def _extra_conditions(filter: Filter) -> dict[str, Any]:
    """Conditions a ``Filter`` may carry beyond ``equals``/``any_of``/``source_prefix`` (kept generic:
    any mapping-valued field of the filter is sent as ``key: value`` / ``key: [values]``)."""
    extra: dict[str, Any] = {}
    for name in getattr(filter, "__dataclass_fields__", {}):
        if name in ("equals", "any_of", "source_prefix"):
            continue
        value = getattr(filter, name)
        if isinstance(value, Mapping):
            extra.update({k: list(v) if isinstance(v, (list, tuple, set, frozenset)) else v for k, v in value.items()})
    return extra


def _labels(value: Any) -> list[str] | None:
    """A readers column's value as a list of groups (``None``: no value)."""
    if isinstance(value, str):  # some responses carry arrays as JSON text
        try:
            value = json.loads(value) if value.startswith("[") else [value]
        except ValueError:
            return None
    if isinstance(value, (list, tuple)):
        return [str(label) for label in value if label is not None]
    return None


def _row_labels(meta: Mapping[str, Any]) -> list[str]:
    """The readers a row is written with: the chunk's ``access`` labels; ``["*"]`` (everyone) for a chunk
    without any (indexed before access control), so every row in the index is labelled."""
    labels = meta.get(ACCESS)
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, (list, tuple)) or not labels:
        return ["*"]
    return [str(label) for label in labels]


def _chunks(rows: list[dict[str, Any]], texts: bool, metadatas: bool, vectors: bool) -> Chunks:
    return Chunks(ids=[r["id"] for r in rows], texts=[r["text"] for r in rows] if texts else None,
                  metadatas=[dict(r["metadata"]) for r in rows] if metadatas else None,
                  vectors=[r["vector"] for r in rows] if vectors else None)


def _value(value: Any) -> Any:
    """A scan ``Value`` as plain Python."""
    if value is None:
        return None
    if value.string_value is not None:
        return value.string_value
    if value.number_value is not None:
        return value.number_value
    if value.bool_value is not None:
        return value.bool_value
    if value.list_value is not None:
        return [_value(v) for v in value.list_value.values or []]
    if value.struct_value is not None:
        return {e.key: _value(e.value) for e in value.struct_value.fields or []}
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _cosine(a: Sequence[float] | None, b: Any) -> float | None:
    if a is None or not isinstance(b, (list, tuple)) or len(a) != len(b) or not b:
        return None
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x) * float(x) for x in a))
    nb = math.sqrt(sum(float(y) * float(y) for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


# ---------------------------------------------------------------- opening, creating


def open_vector_store(client: Any, config: VectorSearchConfig, embeddings: Any, *, create: bool = False,
                      notice: Callable[[str], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> VectorSearchChunkStore:
    """The index as a ``ChunkStore``, checked: it exists (``create``: the endpoint and a Direct Vector Access
    index are created when missing, and waited for), its kind fits (a Delta Sync index only with
    ``read_only``), and its dimension is the embedding model's."""
    store = VectorSearchChunkStore(client, config, embeddings, sleep=sleep)
    say = notice or (lambda message: None)
    try:
        info = store.describe(fresh=True)
    except IndexMissingError:
        if not create or config.read_only:
            raise
        info = _create(store, say)
    kind = getattr(info.index_type, "value", None)
    if kind != "DIRECT_ACCESS" and not config.read_only:
        raise UsageError(f"KB_VS_INDEX={store.index} is a {kind or 'non-direct'} index, which kb cannot write",
                         hint="set KB_VS_READ_ONLY=1 to query it, or point KB_VS_INDEX at a Direct Vector Access index")
    _wait_ready(store, say, sleep)
    if not store.computes_embeddings and embeddings is not None:
        have = store.dimension
        want = getattr(embeddings, "dimension", None) or len(embeddings.embed_query("dimension"))
        if have and want and have != want:
            raise EmbeddingMismatchError(
                f"Vector Search index {store.index} holds {have}-dimensional vectors, but KB_EMBEDDINGS gives {want}",
                hint="use the embedding model the index was built with, or another KB_VS_INDEX")
    if kind == "DIRECT_ACCESS":
        _check_schema(store, info)
        if create and not config.read_only and store.access_column is None:
            say(f"Vector Search index {store.index} has no '{ACCESS}' column: access control needs "
                "'kb ingest --rebuild' (it recreates the index with the column) or a new KB_VS_INDEX")
    return store


def _check_schema(store: VectorSearchChunkStore, info: Any) -> None:
    spec = info.direct_access_index_spec
    try:
        schema = json.loads(spec.schema_json) if spec and spec.schema_json else {}
    except ValueError:
        schema = {}
    needed = [store.config.column(name) for name in ("id", "text", "vector", "source", "root", "text_sha")]
    missing = [name for name in needed if schema and name not in schema]
    if missing:
        raise IndexUnusableError(
            f"Vector Search index {store.index} lacks the columns {', '.join(missing)} kb needs",
            hint=f"create it with kb's schema ({describe_schema()}) or name its columns in KB_VS_COLUMNS")


def describe_schema(dimension: int | None = None) -> str:
    vector = f"array<float> of dimension {dimension}" if dimension else "array<float>"
    return ", ".join(f"{name} {vector if kind == 'array<float>' else kind}" for name, kind in SCHEMA.items()) \
        + ", primary key id"


def _create(store: VectorSearchChunkStore, say: Callable[[str], None]) -> Any:
    from databricks.sdk.service.vectorsearch import (
        DirectAccessVectorIndexSpec,
        EmbeddingVectorColumn,
        EndpointType,
        VectorIndexType,
    )

    config = store.config
    if not config.endpoint:
        raise UsageError(f"KB_VS_ENDPOINT is not set: it names the Vector Search endpoint to create {store.index} on",
                         hint="set KB_VS_ENDPOINT to an existing endpoint (or a new name: kb creates it)")
    dimension = getattr(store.embeddings, "dimension", None) or len(store.embeddings.embed_query("dimension"))
    what_to_create = (f"ask a workspace admin to create the endpoint {config.endpoint} (STANDARD) and the Direct "
                      f"Vector Access index {store.index} on it ({describe_schema(dimension)}), and to grant you "
                      "MODIFY on it")
    endpoints = store.client.vector_search_endpoints
    try:
        endpoint = store._call("describe the endpoint", endpoints.get_endpoint, config.endpoint)
    except IndexMissingError:
        say(f"creating Vector Search endpoint {config.endpoint} (STANDARD)")
        try:
            store._call("create the endpoint", endpoints.create_endpoint, name=config.endpoint,
                        endpoint_type=EndpointType.STANDARD)
        except IndexUnusableError as exc:
            raise IndexUnusableError(f"cannot create Vector Search endpoint KB_VS_ENDPOINT={config.endpoint} "
                                     f"({exc.message})", hint=what_to_create) from None
        endpoint = None
    _wait_endpoint(store, endpoint, say, store._sleep)
    say(f"creating Direct Vector Access index {store.index} ({dimension} dimensions)")
    spec = DirectAccessVectorIndexSpec(
        embedding_vector_columns=[EmbeddingVectorColumn(name="vector", embedding_dimension=dimension)],
        schema_json=json.dumps(SCHEMA))
    try:
        store._call("create the index", store.client.vector_search_indexes.create_index, name=store.index,
                    endpoint_name=config.endpoint, primary_key="id", index_type=VectorIndexType.DIRECT_ACCESS,
                    direct_access_index_spec=spec)
    except KbError as exc:
        raise IndexUnusableError(f"cannot create Vector Search index KB_VS_INDEX={store.index} ({exc.message})",
                                 hint=what_to_create) from None
    return store.describe(fresh=True)


def _wait_endpoint(store: VectorSearchChunkStore, endpoint: Any, say: Callable[[str], None],
                   sleep: Callable[[float], None]) -> None:
    name = store.config.endpoint
    deadline = time.monotonic() + store.config.wait_seconds
    last = None
    while True:
        if endpoint is None:
            endpoint = store._call("describe the endpoint", store.client.vector_search_endpoints.get_endpoint, name)
        state = getattr(getattr(endpoint.endpoint_status, "state", None), "value", None) if endpoint.endpoint_status else None
        if state == "ONLINE":
            return
        if state in ("OFFLINE", "DELETED", "STOPPED", "RED_STATE"):
            message = getattr(endpoint.endpoint_status, "message", "") or ""
            raise IndexUnusableError(f"Vector Search endpoint KB_VS_ENDPOINT={name} is {state} {message}".strip(),
                                     hint="start or fix the endpoint in the workspace, or choose another KB_VS_ENDPOINT")
        if time.monotonic() > deadline:
            raise IndexUnusableError(f"Vector Search endpoint {name} is still {state} after "
                                     f"{store.config.wait_seconds:.0f} s", hint="run 'kb ingest' again later")
        if state != last:
            say(f"waiting for Vector Search endpoint {name} to be ONLINE (now {state or 'unknown'})")
            last = state
        sleep(store.config.poll_seconds)
        endpoint = None


def _wait_ready(store: VectorSearchChunkStore, say: Callable[[str], None], sleep: Callable[[float], None]) -> None:
    deadline = time.monotonic() + store.config.wait_seconds
    last = None
    while True:
        status = store.describe(fresh=True).status
        if status is None or status.ready:
            return
        message = (status.message or "").strip()
        if time.monotonic() > deadline:
            raise IndexUnusableError(f"Vector Search index {store.index} is still not ready ({message[:160]})",
                                     hint="run 'kb ingest' again later")
        if message != last:
            say(f"waiting for Vector Search index {store.index} to be ready ({message[:160] or 'provisioning'})")
            last = message
        sleep(store.config.poll_seconds)


def delete_all(store: VectorSearchChunkStore, *, notice: Callable[[str], None] | None = None) -> int:
    """Remove every row (``kb ingest --rebuild``): the index stays, its rows go. A Direct Vector Access
    index created before kb wrote the readers column is deleted and created again with ``SCHEMA``
    instead (a schema cannot be altered), so that access control works on it."""
    store._writable()
    if store.direct and store.access_column is None:
        return _recreate(store, notice or (lambda message: None))
    ids = [row["id"] for row in store._scan_rows()]
    store.delete(ids)
    return len(ids)


def _recreate(store: VectorSearchChunkStore, say: Callable[[str], None]) -> int:
    from dataclasses import replace

    info = store.describe(fresh=True)
    if not store.config.endpoint:  # the index's own endpoint, before anything is deleted
        store.config = replace(store.config, endpoint=getattr(info, "endpoint_name", None) or None)
    if not store.config.endpoint:
        raise UsageError(f"KB_VS_ENDPOINT is not set: it names the Vector Search endpoint to create {store.index} "
                         "on again", hint="set KB_VS_ENDPOINT")
    rows = int(getattr(info.status, "indexed_row_count", None) or 0) if info.status else 0
    say(f"deleting Vector Search index {store.index} to create it again with an '{ACCESS}' column (access control)")
    store._call("delete the index", store.client.vector_search_indexes.delete_index, store.index)
    deadline = time.monotonic() + store.config.wait_seconds
    while True:  # deletion may take a moment: the name is free once the index is gone
        try:
            store.describe(fresh=True)
        except IndexMissingError:
            break
        if time.monotonic() > deadline:
            raise IndexUnusableError(f"Vector Search index {store.index} is still being deleted after "
                                     f"{store.config.wait_seconds:.0f} s", hint="run 'kb ingest --rebuild' again later")
        store._sleep(store.config.poll_seconds)
    _create(store, say)
    _wait_ready(store, say, store._sleep)
    return rows
