"""A real loopback HTTP server speaking the documented Databricks Vector Search REST API and the Files API,
so that the real databricks-sdk ``WorkspaceClient`` talks to it (paths and bodies as in the installed SDK's
``databricks/sdk/service/vectorsearch.py`` and ``files.py``). Stdlib only; TCP_NODELAY; bearer token auth.

Vector Search: ``/api/2.0/vector-search/endpoints`` (create, get), ``/api/2.0/vector-search/indexes``
(create, get, delete), ``.../upsert-data`` (``inputs_json``), ``.../delete-data`` (``primary_keys`` in the query
string), ``.../query`` (``query_vector``/``query_text``/``query_type`` ANN|HYBRID|FULL_TEXT/``filters_json``/
``num_results``/``columns``; results in ``manifest.columns`` + ``result.data_array`` with ``score`` last,
``next_page_token`` past ``query_page`` rows), ``.../query-next-page``, ``.../scan`` (``last_primary_key``,
rows as ``Struct`` fields). ANN is exact, scored ``1 / (1 + L2^2)`` like the service's L2 indexes.
Filters (standard endpoints' dictionary): ``{"col": v}`` equals, ``{"col": [v, w]}`` any of, ``"col NOT"``;
on an array column (``ARRAY<STRING>``: a list in the row) a value means "contains it" and a list
"contains any of them"; rows are filtered before ranking, so ``num_results`` rows that match come back.
Errors are ``{"error_code", "message"}`` with the documented status; ``throttle()`` / ``fail()`` script
429s (with ``Retry-After``) and 5xx. Limits enforced: ``max_upsert_rows``, ``max_upsert_bytes``,
``max_delete_keys``, ``max_scan``, ``max_results``.

Files: ``GET /api/2.0/fs/directories{path}`` (``page_size``, ``page_token``), ``HEAD`` of a directory,
``GET``/``HEAD /api/2.0/fs/files{path}`` (``Content-Length``, ``Last-Modified``; ``Range``). The SDK's
presigned-URL route (``/api/2.0/fs/create-download-url``) answers 404 NOT_FOUND, which the SDK treats as
"use the Files API on the workspace host".
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

VS = "/api/2.0/vector-search"
_WORDS = re.compile(r"\w+", re.UNICODE)


@dataclass
class Index:
    name: str
    endpoint: str
    primary_key: str
    index_type: str
    spec: dict
    schema: dict
    dimension: int
    vector_column: str
    rows: dict = field(default_factory=dict)  # primary key -> row dict
    ready_after: int = 0  # GETs that still answer "not ready"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: "VectorSearchStub"

    def handle_error(self, request, client_address):
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_GET

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        stub = self.server.stub
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        stub._record(self.command, path, query, body, len(raw))
        status, payload, extra = stub._handle(self.command, path, query, headers, body)
        if isinstance(payload, (bytes, bytearray)):
            data, ctype = bytes(payload), "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(extra.pop("Content-Length", len(data))))
        self.send_header("x-request-id", str(uuid.uuid4()))
        for key, value in extra.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()


def _err(status: int, code: str, message: str, headers: dict | None = None) -> tuple[int, Any, dict]:
    return status, {"error_code": code, "message": message}, dict(headers or {})


class VectorSearchStub:
    def __init__(self, token: str = "dapi-vs-token", *, query_page: int = 10_000) -> None:
        self.token = token
        self.endpoints: dict[str, dict] = {}
        self.indexes: dict[str, Index] = {}
        self.files: dict[str, tuple[bytes, int]] = {}  # /Volumes/... -> (content, last_modified ms)
        self.dirs: set[str] = set()
        self.requests: list[tuple[str, str, dict, Any, int]] = []  # (method, path, query, body, bytes)
        self.scripted: list[tuple[str, int, str, int]] = []  # (path suffix, status, code, retry-after)
        self.endpoint_online_after = 0  # GETs of a new endpoint that answer PROVISIONING
        self.index_ready_after = 0
        self.query_page = query_page
        self.list_page = 1000
        self.max_upsert_rows = 1000
        self.max_upsert_bytes = 10 * 1024 * 1024
        self.max_delete_keys = 1000
        self.max_scan = 100
        self.max_results = 10_000
        self.full_text = True  # False: FULL_TEXT and HYBRID answer 400 like an index without them
        self.forbid_create = False  # the principal may not create endpoints or indexes
        self.deleted_indexes: list[str] = []
        self._pages: dict[str, tuple[list, list]] = {}  # next_page_token -> (columns, rows left)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.host_url = ""

    # -- lifecycle
    def start(self) -> "VectorSearchStub":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        self._server = server
        self.host_url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "VectorSearchStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- scripting and inspection
    def throttle(self, suffix: str, times: int = 1, *, status: int = 429, retry_after: int = 0,
                 code: str = "REQUEST_LIMIT_EXCEEDED") -> None:
        with self._lock:
            self.scripted.extend([(suffix, status, code, retry_after)] * times)

    def put_file(self, path: str, content: bytes, mtime_ms: int | None = None) -> None:
        with self._lock:
            self.files[path] = (content, int(mtime_ms if mtime_ms is not None else time.time() * 1000))

    def remove_file(self, path: str) -> None:
        with self._lock:
            self.files.pop(path, None)

    def calls(self, suffix: str, method: str | None = None) -> list[tuple[str, str, dict, Any, int]]:
        with self._lock:
            return [r for r in self.requests if r[1].endswith(suffix) and (method is None or r[0] == method)]

    def rows(self, index: str) -> dict:
        with self._lock:
            return {k: dict(v) for k, v in self.indexes[index].rows.items()}

    def _record(self, method: str, path: str, query: dict, body: Any, size: int) -> None:
        with self._lock:
            self.requests.append((method, path, query, body, size))

    # -- routing
    def _handle(self, method: str, path: str, query: dict, headers: dict, body: Any) -> tuple[int, Any, dict]:
        if method == "GET" and path == "/.well-known/databricks-config":  # host metadata: no auth, no OIDC here
            return 200, {"workspace_id": "1234567890"}, {}
        if headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "UNAUTHENTICATED", "Invalid access token.")
        with self._lock:
            for i, (suffix, status, code, retry_after) in enumerate(self.scripted):
                if path.endswith(suffix):
                    del self.scripted[i]
                    extra = {"Retry-After": retry_after} if status in (429, 503) else {}
                    return _err(status, code, f"scripted {status}", extra)
        if body is None:
            return _err(400, "MALFORMED_REQUEST", "Malformed JSON request body")
        with self._lock:
            if path.startswith(VS + "/endpoints"):
                return self._endpoints(method, path[len(VS + "/endpoints"):], body)
            if path.startswith(VS + "/indexes"):
                return self._indexes(method, path[len(VS + "/indexes"):], query, body)
            if path.startswith("/api/2.0/fs/directories"):
                return self._directory(method, path[len("/api/2.0/fs/directories"):], query)
            if path.startswith("/api/2.0/fs/files"):
                return self._file(method, path[len("/api/2.0/fs/files"):], headers)
        return _err(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    # -- endpoints
    def _endpoint_info(self, name: str) -> dict:
        info = self.endpoints[name]
        if info["gets"] > 0:
            info["gets"] -= 1
            state = "PROVISIONING"
        else:
            state = "ONLINE"
        return {"name": name, "endpoint_type": info["type"], "endpoint_status": {"state": state},
                "num_indexes": sum(1 for i in self.indexes.values() if i.endpoint == name), "id": info["id"]}

    def _endpoints(self, method: str, rest: str, body: dict) -> tuple[int, Any, dict]:
        if method == "POST" and rest == "":
            if self.forbid_create:
                return _err(403, "PERMISSION_DENIED", "User does not have permission to create endpoints")
            name = body.get("name")
            if not name or body.get("endpoint_type") not in ("STANDARD", "STORAGE_OPTIMIZED"):
                return _err(400, "INVALID_PARAMETER_VALUE", "name and endpoint_type are required")
            if name in self.endpoints:
                return _err(409, "RESOURCE_ALREADY_EXISTS", f"Endpoint {name} already exists")
            self.endpoints[name] = {"type": body["endpoint_type"], "gets": self.endpoint_online_after,
                                    "id": uuid.uuid4().hex}
            return 200, self._endpoint_info(name) | {"endpoint_status": {"state": "PROVISIONING"}}, {}
        name = rest.lstrip("/")
        if method == "GET" and name and "/" not in name:
            if name not in self.endpoints:
                return _err(404, "RESOURCE_DOES_NOT_EXIST", f"Vector search endpoint {name} not found")
            return 200, self._endpoint_info(name), {}
        return _err(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {VS}/endpoints{rest}'")

    # -- indexes
    def _index_json(self, index: Index, poll: bool = True) -> dict:
        ready = index.ready_after <= 0
        if not ready and poll:
            index.ready_after -= 1
        out = {"name": index.name, "endpoint_name": index.endpoint, "primary_key": index.primary_key,
               "index_type": index.index_type,
               "status": {"ready": ready, "indexed_row_count": len(index.rows),
                          "message": "Index is ready" if ready else "Index is being provisioned"}}
        key = "direct_access_index_spec" if index.index_type == "DIRECT_ACCESS" else "delta_sync_index_spec"
        out[key] = index.spec
        return out

    def add_delta_sync_index(self, name: str, endpoint: str, *, columns: dict, dimension: int,
                             vector_column: str, primary_key: str) -> Index:
        """An index someone else maintains (rows set directly by the test)."""
        self.endpoints.setdefault(endpoint, {"type": "STANDARD", "gets": 0, "id": uuid.uuid4().hex})
        spec = {"source_table": "main.docs.chunks", "pipeline_type": "TRIGGERED",
                "embedding_vector_columns": [{"name": vector_column, "embedding_dimension": dimension}]}
        index = Index(name, endpoint, primary_key, "DELTA_SYNC", spec, columns, dimension, vector_column)
        self.indexes[name] = index
        return index

    def _indexes(self, method: str, rest: str, query: dict, body: dict) -> tuple[int, Any, dict]:
        if method == "POST" and rest == "":
            return self._create_index(body)
        name, _, action = rest.lstrip("/").partition("/")
        index = self.indexes.get(name)
        if index is None:
            return _err(404, "RESOURCE_DOES_NOT_EXIST", f"Index {name} does not exist.")
        if method == "GET" and not action:
            return 200, self._index_json(index), {}
        if method == "DELETE" and not action:
            del self.indexes[name]
            self.deleted_indexes.append(name)
            return 200, {}, {}
        if method == "POST" and action == "upsert-data":
            return self._upsert(index, body)
        if method == "DELETE" and action == "delete-data":
            return self._delete(index, query.get("primary_keys", []))
        if method == "POST" and action == "query":
            return self._query(index, body)
        if method == "POST" and action == "query-next-page":
            return self._next_page(index, body)
        if method == "POST" and action == "scan":
            return self._scan(index, body)
        return _err(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {VS}/indexes{rest}'")

    def _create_index(self, body: dict) -> tuple[int, Any, dict]:
        if self.forbid_create:
            return _err(403, "PERMISSION_DENIED", "User does not have CREATE TABLE on schema")
        name, endpoint = body.get("name"), body.get("endpoint_name")
        if not name or len(name.split(".")) != 3:
            return _err(400, "INVALID_PARAMETER_VALUE", "Index name must be catalog.schema.name")
        if endpoint not in self.endpoints:
            return _err(404, "RESOURCE_DOES_NOT_EXIST", f"Vector search endpoint {endpoint} not found")
        if name in self.indexes:
            return _err(409, "RESOURCE_ALREADY_EXISTS", f"Index {name} already exists")
        if body.get("index_type") != "DIRECT_ACCESS":
            return _err(400, "INVALID_PARAMETER_VALUE", "only DIRECT_ACCESS indexes are created by this stub")
        spec = body.get("direct_access_index_spec") or {}
        try:
            schema = json.loads(spec.get("schema_json") or "")
        except ValueError:
            return _err(400, "INVALID_PARAMETER_VALUE", "schema_json is not valid JSON")
        vectors = spec.get("embedding_vector_columns") or []
        if len(vectors) != 1 or not vectors[0].get("embedding_dimension") or vectors[0].get("name") not in schema:
            return _err(400, "INVALID_PARAMETER_VALUE", "exactly one embedding vector column with a dimension")
        if body.get("primary_key") not in schema:
            return _err(400, "INVALID_PARAMETER_VALUE", "primary key is not in the schema")
        index = Index(name, endpoint, body["primary_key"], "DIRECT_ACCESS", spec, schema,
                      int(vectors[0]["embedding_dimension"]), vectors[0]["name"], ready_after=self.index_ready_after)
        self.indexes[name] = index
        return 200, self._index_json(index, poll=False), {}

    def _upsert(self, index: Index, body: dict) -> tuple[int, Any, dict]:
        if index.index_type != "DIRECT_ACCESS":
            return _err(400, "INVALID_PARAMETER_VALUE", "upsert-data needs a Direct Vector Access index")
        raw = body.get("inputs_json") or ""
        if len(raw.encode()) > self.max_upsert_bytes:
            return _err(400, "INVALID_PARAMETER_VALUE", f"inputs_json exceeds {self.max_upsert_bytes} bytes")
        try:
            rows = json.loads(raw)
        except ValueError:
            return _err(400, "INVALID_PARAMETER_VALUE", "inputs_json is not valid JSON")
        if not isinstance(rows, list) or len(rows) > self.max_upsert_rows:
            return _err(400, "INVALID_PARAMETER_VALUE", f"at most {self.max_upsert_rows} rows per upsert")
        failed = []
        for row in rows:
            key = row.get(index.primary_key) if isinstance(row, dict) else None
            vector = row.get(index.vector_column) if isinstance(row, dict) else None
            bad = key is None or set(row) - set(index.schema) or not isinstance(vector, list) \
                or len(vector) != index.dimension
            if bad:
                failed.append(str(key))
                continue
            index.rows[str(key)] = row
        status = "SUCCESS" if not failed else ("PARTIAL_SUCCESS" if len(failed) < len(rows) else "FAILURE")
        return 200, {"status": status, "result": {"success_row_count": len(rows) - len(failed),
                                                  **({"failed_primary_keys": failed} if failed else {})}}, {}

    def _delete(self, index: Index, keys: list) -> tuple[int, Any, dict]:
        if len(keys) > self.max_delete_keys:
            return _err(400, "INVALID_PARAMETER_VALUE", f"at most {self.max_delete_keys} primary keys per delete")
        for key in keys:
            index.rows.pop(key, None)
        return 200, {"status": "SUCCESS", "result": {"success_row_count": len(keys)}}, {}

    def _matches(self, row: dict, filters: dict) -> bool:
        for key, wanted in filters.items():
            column, _, op = key.partition(" ")
            value = row.get(column)
            options = wanted if isinstance(wanted, list) else [wanted]
            if isinstance(value, list):  # an array column: contains (any of) the values
                hit = any(v in value for v in options)
            else:
                hit = value in options
            if op.upper() == "NOT":
                if hit:
                    return False
            elif op == "":
                if not hit:
                    return False
            else:
                raise ValueError(f"unsupported filter operator {op!r}")
        return True

    def _lexical(self, index: Index, text: str, candidates: list[dict]) -> list[tuple[dict, float]]:
        terms = set(_WORDS.findall(text.lower()))
        scored = []
        for row in candidates:
            words = _WORDS.findall(str(row.get("text") or "").lower())
            score = sum(1.0 for w in words if w in terms) / math.sqrt(len(words) + 1)
            if score > 0:
                scored.append((row, score))
        scored.sort(key=lambda pair: (-pair[1], str(pair[0].get(index.primary_key))))
        return scored

    def _query(self, index: Index, body: dict) -> tuple[int, Any, dict]:
        columns = body.get("columns")
        if not isinstance(columns, list) or not columns:
            return _err(400, "INVALID_PARAMETER_VALUE", "columns is required")
        unknown = [c for c in columns if c not in index.schema]
        if unknown:
            return _err(400, "INVALID_PARAMETER_VALUE", f"Requested columns not in the index: {unknown}")
        qtype = str(body.get("query_type") or "ANN").upper()
        if qtype not in ("ANN", "HYBRID", "FULL_TEXT"):
            return _err(400, "INVALID_PARAMETER_VALUE", f"unknown query_type {qtype}")
        if qtype != "ANN" and not self.full_text:
            return _err(400, "INVALID_PARAMETER_VALUE", f"query_type {qtype} is not supported for this index")
        n = body.get("num_results", 10)
        if not isinstance(n, int) or n < 1 or n > self.max_results:
            return _err(400, "INVALID_PARAMETER_VALUE", f"num_results must be between 1 and {self.max_results}")
        try:
            filters = json.loads(body["filters_json"]) if body.get("filters_json") else {}
            candidates = [r for r in index.rows.values() if self._matches(r, filters)]
        except (ValueError, TypeError) as exc:
            return _err(400, "INVALID_PARAMETER_VALUE", f"Invalid filters_json: {exc}")
        vector = body.get("query_vector")
        text = body.get("query_text")
        if qtype in ("ANN", "HYBRID") and (not isinstance(vector, list) or len(vector) != index.dimension):
            return _err(400, "INVALID_PARAMETER_VALUE",
                        f"query_vector of dimension {index.dimension} is required for {qtype}")
        if qtype in ("HYBRID", "FULL_TEXT") and not isinstance(text, str):
            return _err(400, "INVALID_PARAMETER_VALUE", f"query_text is required for {qtype}")
        if qtype == "FULL_TEXT":
            ranked = self._lexical(index, text, candidates)
        else:
            ann = sorted(((r, 1.0 / (1.0 + sum((float(a) - float(b)) ** 2 for a, b in zip(r[index.vector_column], vector))))
                          for r in candidates), key=lambda pair: (-pair[1], str(pair[0].get(index.primary_key))))
            ranked = ann
            if qtype == "HYBRID":  # reciprocal rank fusion of ANN and full text
                fused: dict[str, list] = {}
                for ranking in (ann, self._lexical(index, text, candidates)):
                    for rank, (row, _) in enumerate(ranking, 1):
                        entry = fused.setdefault(str(row[index.primary_key]), [row, 0.0])
                        entry[1] += 1.0 / (60 + rank)
                ranked = sorted(((row, score) for row, score in fused.values()),
                                key=lambda pair: (-pair[1], str(pair[0].get(index.primary_key))))
        data = [[row.get(c) for c in columns] + [score] for row, score in ranked[:n]]
        return 200, self._page(index, columns, data), {}

    def _page(self, index: Index, columns: list, data: list) -> dict:
        page, rest = data[: self.query_page], data[self.query_page:]
        out = {"manifest": {"column_count": len(columns) + 1,
                            "columns": [{"name": c} for c in columns] + [{"name": "score"}]},
               "result": {"row_count": len(page), "data_array": page}}
        if rest:
            token = uuid.uuid4().hex
            self._pages[token] = (columns, rest)
            out["next_page_token"] = token
        return out

    def _next_page(self, index: Index, body: dict) -> tuple[int, Any, dict]:
        pages = self._pages
        token = body.get("page_token")
        if token not in pages:
            return _err(400, "INVALID_PARAMETER_VALUE", "invalid page_token")
        columns, rest = pages.pop(token)
        return 200, self._page(index, columns, rest), {}

    def _scan(self, index: Index, body: dict) -> tuple[int, Any, dict]:
        n = body.get("num_results", 10)
        if not isinstance(n, int) or n < 1 or n > self.max_scan:
            return _err(400, "INVALID_PARAMETER_VALUE", f"num_results must be between 1 and {self.max_scan}")
        last = body.get("last_primary_key")
        keys = sorted(index.rows)
        if last is not None:
            keys = [k for k in keys if k > last]
        page = keys[:n]
        data = [{"fields": [{"key": c, "value": _value(v)} for c, v in index.rows[k].items()]} for k in page]
        out: dict = {"data": data}
        if page:
            out["last_primary_key"] = page[-1]
        return 200, out, {}

    # -- files
    def _directory(self, method: str, path: str, query: dict) -> tuple[int, Any, dict]:
        path = path.rstrip("/")
        prefix = path + "/"
        exists = path in self.dirs or any(p.startswith(prefix) for p in self.files)
        if not exists:
            return _err(404, "NOT_FOUND", f"The directory {path} does not exist.")
        if method == "HEAD":
            return 200, b"", {"Content-Length": 0}
        if method != "GET":
            return _err(405, "METHOD_NOT_ALLOWED", method)
        entries: dict[str, dict] = {}
        for file, (content, mtime) in self.files.items():
            if not file.startswith(prefix):
                continue
            head, _, tail = file[len(prefix):].partition("/")
            if tail:
                entries.setdefault(head, {"path": prefix + head, "is_directory": True, "name": head})
            else:
                entries[head] = {"path": file, "is_directory": False, "file_size": len(content),
                                 "last_modified": mtime, "name": head}
        for folder in self.dirs:
            if folder.startswith(prefix) and "/" not in folder[len(prefix):]:
                name = folder[len(prefix):]
                entries.setdefault(name, {"path": folder, "is_directory": True, "name": name})
        ordered = [entries[k] for k in sorted(entries)]
        start = int(query.get("page_token", ["0"])[0] or 0)
        size = min(int(query.get("page_size", [str(self.list_page)])[0]), self.list_page, 1000)
        out: dict = {"contents": ordered[start : start + size]}
        if start + size < len(ordered):
            out["next_page_token"] = str(start + size)
        return 200, out, {}

    def _file(self, method: str, path: str, headers: dict) -> tuple[int, Any, dict]:
        if path not in self.files:
            return _err(404, "NOT_FOUND", f"The file {path} does not exist.")
        content, mtime = self.files[path]
        meta = {"Last-Modified": formatdate(mtime / 1000, usegmt=True)}
        if method == "HEAD":
            return 200, b"", meta | {"Content-Length": len(content)}
        if method != "GET":
            return _err(405, "METHOD_NOT_ALLOWED", method)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            part = content[start : end + 1]
            return 206, part, meta | {"Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(content)}"}
        return 200, content, meta


def _value(v: Any) -> dict:
    if isinstance(v, bool):
        return {"bool_value": v}
    if isinstance(v, (int, float)):
        return {"number_value": v}
    if isinstance(v, list):
        return {"list_value": {"values": [_value(x) for x in v]}}
    if v is None:
        return {"null_value": "NULL_VALUE"}
    return {"string_value": str(v)}
