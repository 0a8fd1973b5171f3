"""A real loopback HTTP server speaking the Databricks Model Serving
OpenAI-compatible protocol (``https://<host>/serving-endpoints``).

Stdlib only.  Typical use::

    with DatabricksStub() as stub:
        stub.enqueue(Reply("hello"), Error(429, "REQUEST_LIMIT_EXCEEDED", "slow down"))
        client = openai.OpenAI(base_url=stub.base_url, api_key=stub.token, max_retries=0)
        ...
        assert stub.chat_requests()[0]["model"] == "test-chat"

Order of checks for every request: route (method + path) -> auth -> JSON body
-> field validation -> endpoint (``model``) existence -> scripted response.
Every request is recorded in ``stub.requests`` *before* any response is sent,
including rejected ones.  Scripted responses are only consumed by requests
that pass auth and validation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

__all__ = [
    "DatabricksStub",
    "Recorded",
    "Reply",
    "Error",
    "Embeddings",
    "CHAT_PATH",
    "EMBEDDINGS_PATH",
    "CHAT_ALLOWED_FIELDS",
    "EMBEDDINGS_ALLOWED_FIELDS",
    "embed_text",
    "ranking_reply",
]

CHAT_PATH = "/serving-endpoints/chat/completions"
EMBEDDINGS_PATH = "/serving-endpoints/embeddings"

CHAT_ALLOWED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stream_options",
        "stop",
        "n",
        "tools",
        "tool_choice",
        "response_format",
        "usage_context",
        "seed",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
    }
)
EMBEDDINGS_ALLOWED_FIELDS = frozenset({"model", "input", "usage_context", "encoding_format"})
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})

_WORD_RE = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- #
# Public dataclasses
# --------------------------------------------------------------------------- #


@dataclass
class Recorded:
    """One request as received by the stub."""

    path: str
    headers: dict  # lower-case header names
    body: Optional[dict]  # parsed JSON object, or None if absent / not JSON
    method: str = "POST"


@dataclass
class Reply:
    """Scripted successful chat completion (streamed if the request asks for it)."""

    text: str = "Stub answer."
    tool_calls: Optional[list] = None  # [{"name", "arguments": dict|str, "id"?}]
    content_blocks: Optional[list] = None  # message.content becomes this list
    usage: Optional[dict] = None
    finish_reason: Optional[str] = None  # default: "tool_calls" if tool_calls else "stop"
    chunk_size: int = 8
    cumulative_usage: bool = False  # stream: every chunk carries cumulative usage
    delay: float = 0.0  # seconds to sleep before sending anything
    drop_after_chunks: Optional[int] = None  # stream: cut the socket after N data events
    end_after_chunks: Optional[int] = None  # stream: end the body cleanly after N data events (no finish, no [DONE])


@dataclass
class Error:
    """Scripted Databricks-style error: JSON ``{"error_code", "message"}``."""

    status: int
    error_code: str
    message: str
    headers: Optional[dict] = None
    delay: float = 0.0


@dataclass
class Embeddings:
    """Scripted embeddings response.

    ``vectors=None`` -> deterministic bag-of-words hash vectors (see ``embed_text``)."""

    vectors: Optional[list] = None
    dim: Optional[int] = None  # default: the stub's embedding_dim
    delay: float = 0.0


Response = Union[Reply, Error, Embeddings]


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _words(text: str) -> list:
    return _WORD_RE.findall(text.lower())


def embed_text(text: str, dim: int = 16) -> list:
    """Deterministic, L2-normalised bag-of-words vector: each word is hashed into
    one of ``dim`` buckets, so texts sharing words get similar vectors."""
    vec = [0.0] * dim
    for w in _words(text):
        h = hashlib.md5(w.encode("utf-8")).digest()
        vec[int.from_bytes(h[:4], "little") % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0:
        vec[0] = 1.0  # avoid a zero vector (cosine similarity would be NaN)
        return vec
    return [x / norm for x in vec]


_PASSAGE_RE = re.compile(r'<passage n="(\d{1,4})"')


def ranking_reply(order: Optional[Callable[[list], list]] = None, *, text: str = "{ranking}", **reply: Any) -> Callable[[dict], Reply]:
    """A chat responder that answers a rerank prompt with a ranking of its numbered passages:
    ``order(numbers)`` -> the numbers best first (default: reversed); ``text`` formats the reply
    (``{ranking}`` is "3, 2, 1"). Usable with ``enqueue`` or as ``default_responder``."""

    def respond(body: dict) -> Reply:
        last = (body.get("messages") or [{}])[-1]
        numbers = [int(n) for n in _PASSAGE_RE.findall(_content_text(last.get("content")))]
        ranked = (order or (lambda ns: list(reversed(ns))))(numbers)
        return Reply(text.format(ranking=", ".join(str(n) for n in ranked)), **reply)

    return respond


def _content_text(content: Any) -> str:
    """Flatten message content (string or list of blocks) into plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                for s in block.get("summary") or []:
                    if isinstance(s, dict) and isinstance(s.get("text"), str):
                        parts.append(s["text"])
        return " ".join(parts)
    return str(content)


def _count_words(text: str) -> int:
    return len(_words(text))


def _pieces(text: str, size: int) -> list:
    size = max(1, int(size))
    return [text[i : i + size] for i in range(0, len(text), size)]


def model_family(model: Any) -> str:
    """Which served family's known behaviour the stub emulates for an endpoint name."""
    name = str(model or "").lower()
    if "claude" in name:
        return "claude"
    if "gpt-oss" in name:
        return "gpt-oss"
    return "openai"


def _bad(message: str) -> Error:
    return Error(400, "BAD_REQUEST", message)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SCHEMA_NAME_MAPS = ("properties", "patternProperties", "$defs", "definitions")


def _find_strict(obj: Any, path: str = "function") -> Optional[str]:
    """Return the path of a ``strict`` key inside a tool's function, if any.
    Keys of JSON-Schema name maps (``properties`` ...) are property names, not
    keywords, so a property called "strict" is fine."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "strict":
                return f"{path}.strict"
            if k in _SCHEMA_NAME_MAPS and isinstance(v, dict):
                for name, sub in v.items():
                    found = _find_strict(sub, f"{path}.{k}.{name}")
                    if found:
                        return found
            else:
                found = _find_strict(v, f"{path}.{k}")
                if found:
                    return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _find_strict(v, f"{path}[{i}]")
            if found:
                return found
    return None


# --------------------------------------------------------------------------- #
# HTTP plumbing
# --------------------------------------------------------------------------- #


class _DropConnection(Exception):
    """Raised inside the handler to abort the connection abruptly."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: "DatabricksStub"

    def handle_error(self, request, client_address):  # noqa: D401 - stdlib API
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, BrokenPipeError, TimeoutError, OSError, _DropConnection)):
            return
        self.stub.errors.append(exc)
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DatabricksStub/1.0"
    sys_version = ""
    server: _Server

    # -- connection lifecycle ------------------------------------------------
    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.stub._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.stub._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    # -- dispatch ------------------------------------------------------------
    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def do_HEAD(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        stub = self.server.stub
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        body: Optional[dict] = None
        parse_error: Optional[str] = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                parse_error = f"Malformed JSON request body: {exc}"
            else:
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    parse_error = "Invalid request: request body must be a JSON object"
        stub._record(Recorded(path=path, headers=headers, body=body, method=self.command))

        try:
            resp = stub._handle(self.command, path, headers, body, raw, parse_error)
            self._send(resp, body or {})
        except _DropConnection:
            self._abort()

    # -- responses -----------------------------------------------------------
    def _abort(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_json(self, status: int, payload: Any, extra_headers: Optional[dict] = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", str(uuid.uuid4()))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _send(self, resp: Any, body: dict) -> None:
        stub = self.server.stub
        delay = getattr(resp, "delay", 0.0) or 0.0
        if delay > 0:
            stub._sleep(delay)
        if isinstance(resp, Error):
            self._send_json(
                resp.status, {"error_code": resp.error_code, "message": resp.message}, resp.headers
            )
        elif isinstance(resp, tuple) and resp and resp[0] == "json":
            _, status, payload = resp
            self._send_json(status, payload)
        elif isinstance(resp, Reply):
            if body.get("stream") is True:
                self._stream_reply(resp, body)
            else:
                if resp.drop_after_chunks is not None:
                    raise _DropConnection()  # connection dies without a response
                self._send_json(200, stub._completion_payload(resp, body))
        else:
            raise TypeError(f"unsupported stub response {resp!r}")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream_reply(self, reply: Reply, body: dict) -> None:
        stub = self.server.stub
        events = stub._stream_events(reply, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.flush()
        drop = reply.drop_after_chunks
        for i, event in enumerate(events):
            if drop is not None and i >= drop:
                raise _DropConnection()
            if reply.end_after_chunks is not None and i >= reply.end_after_chunks:
                self.wfile.write(b"0\r\n\r\n")  # a clean end of the body, without the stream's end
                self.wfile.flush()
                return
            self._write_chunk(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")
        if drop is not None:
            raise _DropConnection()  # cut right before [DONE]
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --------------------------------------------------------------------------- #
# The stub
# --------------------------------------------------------------------------- #


class DatabricksStub:
    """Loopback Databricks Model Serving (OpenAI-compatible) server."""

    DEFAULT_ENDPOINTS = frozenset(
        {
            "databricks-meta-llama-3-1-405b-instruct",
            "databricks-meta-llama-3-3-70b-instruct",
            "databricks-llama-4-maverick",
            "databricks-claude-sonnet-4-5",
            "databricks-gpt-oss-120b",
            "test-chat",
        }
    )
    DEFAULT_EMBEDDING_ENDPOINTS = frozenset({"databricks-gte-large-en"})

    def __init__(
        self,
        token: str = "dapi-test-token",
        endpoints: Optional[set] = None,
        embedding_endpoints: Optional[set] = None,
        *,
        embedding_dim: int = 16,
        max_embedding_batch: int = 150,
        default_responder: Optional[Callable[[dict], Response]] = None,
        default_embeddings_responder: Optional[Callable[[dict], Response]] = None,
        ssl_context: Any = None,
    ) -> None:
        self.ssl_context = ssl_context  # an ssl.SSLContext (server side): serve HTTPS, like a workspace
        self.token = token
        self.endpoints = set(self.DEFAULT_ENDPOINTS if endpoints is None else endpoints)
        self.embedding_endpoints = set(
            self.DEFAULT_EMBEDDING_ENDPOINTS if embedding_endpoints is None else embedding_endpoints
        )
        self.embedding_dim = embedding_dim
        self.max_embedding_batch = max_embedding_batch
        self.default_responder: Callable[[dict], Response] = default_responder or (
            lambda body: Reply("Stub answer.")
        )
        self.default_embeddings_responder: Callable[[dict], Response] = default_embeddings_responder or (
            lambda body: Embeddings()
        )
        self.requests: list = []  # list[Recorded]; appended under self._lock
        self.errors: list = []  # unexpected exceptions raised inside handlers
        self._chat_queue: deque = deque()
        self._emb_queue: deque = deque()
        self._lock = threading.Lock()
        self._conns: set = set()
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.host_url = ""
        self.base_url = ""
        self.port = 0
        self.connections_opened = 0  # TCP connections accepted since start/reset
        # Workspace side (unified auth, REST): OAuth M2M clients, tokens issued, endpoints' state.
        self.oauth_clients: dict = {}  # client_id -> client_secret
        self.token_lifetime = 3600  # seconds an OAuth access token lives
        self.issued_tokens: dict = {}  # access token -> expiry (time.monotonic())
        self.identity = {"userName": "kb-tester@example.com", "id": "1234", "displayName": "KB Tester"}
        self.endpoint_states: dict = {}  # name -> {"ready": "READY"|"NOT_READY", "task": "llm/v1/chat"}
        self.rest_available = True  # False: the REST API answers 404 (e.g. base_url points elsewhere)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "DatabricksStub":
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self.host_url = f"{'https' if self.ssl_context is not None else 'http'}://127.0.0.1:{self.port}"
        self.base_url = self.host_url + "/serving-endpoints"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="databricks-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        # shutdown() waits for serve_forever's poll loop; poke the listening
        # socket so the select() wakes immediately instead of after poll_interval.
        waker = threading.Thread(target=server.shutdown, daemon=True)
        waker.start()
        for _ in range(3):
            waker.join(0.005)
            if not waker.is_alive():
                break
            try:
                socket.create_connection(server.server_address, timeout=0.5).close()
            except OSError:
                break
        waker.join()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # wake handler threads blocked on idle keep-alive sockets
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "DatabricksStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------
    def enqueue(self, *responses: Any) -> None:
        """Queue chat responses (Reply / Error / callable(body) -> response), FIFO."""
        with self._lock:
            self._chat_queue.extend(responses)

    def enqueue_embeddings(self, *responses: Any) -> None:
        """Queue embeddings responses (Embeddings / Error / callable(body) -> response)."""
        with self._lock:
            self._emb_queue.extend(responses)

    def pending(self) -> int:
        """Number of scripted chat responses not yet consumed."""
        with self._lock:
            return len(self._chat_queue)

    def pending_embeddings(self) -> int:
        with self._lock:
            return len(self._emb_queue)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._chat_queue.clear()
            self._emb_queue.clear()
            self.errors.clear()
            self.connections_opened = 0
            self.issued_tokens.clear()
            self.oauth_clients.clear()
            self.token_lifetime = 3600
            self.endpoint_states.clear()
            self.rest_available = True

    # -- inspection ----------------------------------------------------------
    def chat_requests(self) -> list:
        with self._lock:
            return [r.body for r in self.requests if r.path == CHAT_PATH]

    def embedding_requests(self) -> list:
        with self._lock:
            return [r.body for r in self.requests if r.path == EMBEDDINGS_PATH]

    # -- internals -----------------------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)
            if add:
                self.connections_opened += 1

    # -- workspace side: OAuth, REST ----------------------------------------
    def add_oauth_client(self, client_id: str, client_secret: str, *, token_lifetime: Optional[float] = None) -> None:
        """Accept OAuth M2M (client credentials) for this service principal."""
        with self._lock:
            self.oauth_clients[client_id] = client_secret
            if token_lifetime is not None:
                self.token_lifetime = token_lifetime

    def tokens_issued(self) -> int:
        with self._lock:
            return len(self.issued_tokens)

    def _token_ok(self, authorization: str) -> bool:
        if authorization == f"Bearer {self.token}":
            return True
        token = authorization[7:] if authorization.startswith("Bearer ") else ""
        with self._lock:
            expiry = self.issued_tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _endpoint_info(self, name: str) -> Optional[dict]:
        if name in self.endpoint_states:
            state = self.endpoint_states[name]
        elif name in self.endpoints:
            state = {"ready": "READY", "task": "llm/v1/chat"}
        elif name in self.embedding_endpoints:
            state = {"ready": "READY", "task": "llm/v1/embeddings"}
        else:
            return None
        return {
            "name": name,
            "task": state.get("task"),
            "state": {"ready": state.get("ready", "READY"), "config_update": "NOT_UPDATING"},
            "endpoint_type": "FOUNDATION_MODEL_API",
            "creator": "system",
        }

    def _workspace(self, method: str, path: str, headers: dict, raw: bytes) -> Any:
        """Routes of the workspace outside serving: discovery, OIDC, REST. None = not one of them."""
        if method == "GET" and path == "/.well-known/databricks-config":
            return ("json", 200, {"oidc_endpoint": self.host_url + "/oidc", "workspace_id": "1234567890"})
        if method == "GET" and path == "/oidc/.well-known/oauth-authorization-server":
            return ("json", 200, {
                "issuer": self.host_url + "/oidc",
                "authorization_endpoint": self.host_url + "/oidc/v1/authorize",
                "token_endpoint": self.host_url + "/oidc/v1/token",
            })
        if path == "/oidc/v1/token":
            return self._token_response(method, headers, raw)
        if not path.startswith("/api/2.0/"):
            return None
        if not self.rest_available:
            return Error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        if not self._token_ok(headers.get("authorization", "")):
            return Error(401, "UNAUTHENTICATED", "Invalid access token.")
        if method == "GET" and path in ("/api/2.0/preview/scim/v2/Me", "/api/2.0/scim/v2/Me"):
            return ("json", 200, dict(self.identity))
        if method == "GET" and path == "/api/2.0/serving-endpoints":
            names = sorted(set(self.endpoints) | set(self.embedding_endpoints) | set(self.endpoint_states))
            return ("json", 200, {"endpoints": [self._endpoint_info(n) for n in names]})
        if method == "GET" and path.startswith("/api/2.0/serving-endpoints/"):
            name = path[len("/api/2.0/serving-endpoints/"):]
            info = self._endpoint_info(name) if "/" not in name else None
            if info is None:
                return Error(404, "RESOURCE_DOES_NOT_EXIST", f"Serving endpoint with name '{name}' does not exist.")
            return ("json", 200, info)
        return Error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def _token_response(self, method: str, headers: dict, raw: bytes) -> Any:
        from urllib.parse import parse_qs

        if method != "POST":
            return ("json", 405, {"error": "invalid_request"})
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = headers.get("authorization", "")
        if basic.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                client_id = secret = None
        if form.get("grant_type") != "client_credentials":
            return ("json", 400, {"error": "unsupported_grant_type"})
        with self._lock:
            known = self.oauth_clients.get(client_id or "")
        if known is None or known != secret:
            return ("json", 401, {"error": "invalid_client", "error_description": "Client authentication failed"})
        token = "oauth-" + uuid.uuid4().hex
        with self._lock:
            self.issued_tokens[token] = time.monotonic() + self.token_lifetime
            lifetime = self.token_lifetime
        return ("json", 200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                              "scope": form.get("scope", "all-apis")})

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _next(self, queue: deque, default: Callable[[dict], Any], body: dict) -> Any:
        with self._lock:
            item = queue.popleft() if queue else None
        if item is None:
            item = default
        if callable(item) and not isinstance(item, (Reply, Error, Embeddings)):
            item = item(body)
        return item

    def _handle(
        self,
        method: str,
        path: str,
        headers: dict,
        body: Optional[dict],
        raw: bytes,
        parse_error: Optional[str],
    ) -> Any:
        workspace = self._workspace(method, path, headers, raw)
        if workspace is not None:
            return workspace
        if method != "POST" or path not in (CHAT_PATH, EMBEDDINGS_PATH):
            return Error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        if not self._token_ok(headers.get("authorization", "")):
            return Error(401, "UNAUTHENTICATED", "Invalid access token.")
        if parse_error:
            return _bad(parse_error)
        if body is None:
            return _bad("Invalid request: request body is required")
        if path == CHAT_PATH:
            err = self._validate_chat(body)
            if err is not None:
                return err
            resp = self._next(self._chat_queue, self.default_responder, body)
            if isinstance(resp, Embeddings):
                return Error(500, "INTERNAL_ERROR", "stub misconfigured: Embeddings scripted for chat")
            return resp
        err = self._validate_embeddings(body)
        if err is not None:
            return err
        resp = self._next(self._emb_queue, self.default_embeddings_responder, body)
        if isinstance(resp, Embeddings):
            return ("json", 200, self._embeddings_payload(resp, body))
        if isinstance(resp, Reply):
            return Error(500, "INTERNAL_ERROR", "stub misconfigured: Reply scripted for embeddings")
        return resp

    def _check_model(self, model: Any, own: set, other: set, kind: str) -> Optional[Error]:
        if not isinstance(model, str) or not model:
            return _bad("Invalid request: missing required field 'model'")
        if model in own:
            return None
        if model in other:
            return _bad(f"Invalid request: endpoint '{model}' does not support {kind}.")
        return Error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint '{model}' does not exist.")

    @staticmethod
    def _unknown_field(body: dict, allowed: frozenset) -> Optional[Error]:
        for key in body:
            if key not in allowed:
                return _bad(f"Invalid request: unknown field '{key}'")
        return None

    @staticmethod
    def _check_usage_context(body: dict) -> Optional[Error]:
        if "usage_context" in body:
            uc = body["usage_context"]
            if not isinstance(uc, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in uc.items()
            ):
                return _bad("Invalid request: usage_context must be a map of string to string")
        return None

    def _validate_chat(self, body: dict) -> Optional[Error]:
        err = self._unknown_field(body, CHAT_ALLOWED_FIELDS) or self._check_usage_context(body)
        if err:
            return err
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return _bad("Invalid request: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
                return _bad(f"Invalid request: messages[{i}] has an invalid or missing role")
        if "stream" in body and not isinstance(body["stream"], bool):
            return _bad("Invalid request: 'stream' must be a boolean")
        if "stream_options" in body and not isinstance(body["stream_options"], dict):
            return _bad("Invalid request: 'stream_options' must be an object")
        if "temperature" in body and body["temperature"] is not None:
            t = body["temperature"]
            if not _is_number(t) or not 0 <= t <= 2:
                return _bad("Invalid request: temperature must be between 0 and 2")
        if "max_tokens" in body and body["max_tokens"] is not None:
            mt = body["max_tokens"]
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                return _bad("Invalid request: max_tokens must be a positive integer")
        if "tools" in body and body["tools"] is not None:
            tools = body["tools"]
            if not isinstance(tools, list):
                return _bad("Invalid request: 'tools' must be a list")
            for i, tool in enumerate(tools):
                if not isinstance(tool, dict) or tool.get("type") != "function":
                    return _bad(f"Invalid request: tools[{i}].type must be 'function'")
                fn = tool.get("function")
                if not isinstance(fn, dict):
                    return _bad(f"Invalid request: tools[{i}].function is required")
                if not isinstance(fn.get("name"), str) or not fn["name"]:
                    return _bad(f"Invalid request: tools[{i}].function.name is required")
                params = fn.get("parameters")
                if not isinstance(params, dict):
                    return _bad(f"Invalid request: tools[{i}].function.parameters must be a JSON schema object")
                where = _find_strict(fn)
                if where or "strict" in tool:
                    return _bad(f"Invalid request: unknown field 'strict' in tools[{i}].{where or 'strict'}")
        err = self._check_model(body.get("model"), self.endpoints, self.embedding_endpoints, "chat completions")
        return err or self._family_quirks(body)

    @staticmethod
    def _family_quirks(body: dict) -> Optional[Error]:
        """What real endpoints of each family refuse (see README, Model quirks, for sources)."""
        family = model_family(body.get("model"))
        for m in body.get("messages") or []:
            if m.get("role") != "assistant" or not m.get("tool_calls"):
                continue
            if family == "claude" and not _content_text(m.get("content")).strip():
                # databricks/databricks-ai-bridge#333: Claude needs non-empty text with tool calls
                return _bad('{"message":"messages: text content blocks must be non-empty"}')
            if family == "gpt-oss" and len(m["tool_calls"]) > 1:
                # BerriAI/litellm#31633: one assistant turn with two tool calls -> 400
                return _bad("Multiple tool calls are not supported.\n")
        return None

    def _validate_embeddings(self, body: dict) -> Optional[Error]:
        err = self._unknown_field(body, EMBEDDINGS_ALLOWED_FIELDS) or self._check_usage_context(body)
        if err:
            return err
        if "encoding_format" in body and body["encoding_format"] not in ("float", "base64"):
            return _bad("Invalid request: encoding_format must be 'float' or 'base64'")
        inp = body.get("input")
        if isinstance(inp, str):
            n = 1
        elif isinstance(inp, list) and inp:
            if not all(isinstance(x, str) for x in inp):
                return _bad("Invalid request: input must be strings")
            n = len(inp)
        elif isinstance(inp, list):
            return _bad("Invalid request: input must not be empty")
        else:
            return _bad("Invalid request: input must be strings")
        if n > self.max_embedding_batch:
            return _bad(
                f"Invalid request: input batch size {n} exceeds the maximum of {self.max_embedding_batch}."
            )
        return self._check_model(body.get("model"), self.embedding_endpoints, self.endpoints, "embeddings")

    # -- payload builders ----------------------------------------------------
    @staticmethod
    def _prompt_tokens(body: dict) -> int:
        return sum(_count_words(_content_text(m.get("content"))) for m in body.get("messages") or [])

    @staticmethod
    def _render_tool_calls(reply: Reply) -> list:
        out = []
        for i, tc in enumerate(reply.tool_calls or []):
            args = tc.get("arguments", {})
            if not isinstance(args, str):
                args = json.dumps(args)
            out.append(
                {
                    "id": tc.get("id") or f"call_{i}_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": tc["name"], "arguments": args},
                }
            )
        return out

    def _usage(self, reply: Reply, body: dict, tool_calls: list) -> dict:
        if reply.usage is not None:
            u = dict(reply.usage)
            u.setdefault("prompt_tokens", 0)
            u.setdefault("completion_tokens", 0)
            u.setdefault("total_tokens", u["prompt_tokens"] + u["completion_tokens"])
            return u
        prompt = self._prompt_tokens(body)
        if reply.content_blocks is not None:
            text = _content_text(reply.content_blocks)
        else:
            text = reply.text or ""
        completion = _count_words(text) + sum(
            _count_words(tc["function"]["name"] + " " + tc["function"]["arguments"]) for tc in tool_calls
        )
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion_payload(self, reply: Reply, body: dict) -> dict:
        tool_calls = self._render_tool_calls(reply)
        message: dict = {"role": "assistant"}
        message["content"] = reply.content_blocks if reply.content_blocks is not None else reply.text
        if tool_calls:
            message["tool_calls"] = tool_calls
            if reply.content_blocks is None and not reply.text:
                message["content"] = None
        finish = reply.finish_reason or ("tool_calls" if tool_calls else "stop")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": self._usage(reply, body, tool_calls),
        }

    def _stream_events(self, reply: Reply, body: dict) -> list:
        """All ``data:`` payloads for a streamed reply (without the final [DONE])."""
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = body.get("model")
        tool_calls = self._render_tool_calls(reply)
        total = self._usage(reply, body, tool_calls)
        deltas: list = [{"role": "assistant", "content": ""}]
        if reply.content_blocks is not None:
            for block in reply.content_blocks:
                btype = block.get("type") if isinstance(block, dict) else None
                if btype == "text" and isinstance(block.get("text"), str):
                    for p in _pieces(block["text"], reply.chunk_size):
                        deltas.append({"content": [{**block, "text": p}]})
                elif btype == "reasoning" and isinstance(block.get("summary"), list):
                    for s in block["summary"]:
                        if isinstance(s, dict) and isinstance(s.get("text"), str):
                            for p in _pieces(s["text"], reply.chunk_size):
                                deltas.append(
                                    {"content": [{**block, "summary": [{**s, "text": p}]}]}
                                )
                        else:
                            deltas.append({"content": [{**block, "summary": [s]}]})
                else:
                    deltas.append({"content": [block]})
        elif reply.text:
            for p in _pieces(reply.text, reply.chunk_size):
                deltas.append({"content": p})
        for i, tc in enumerate(tool_calls):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": tc["id"],
                            "type": "function",
                            "function": {"name": tc["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for p in _pieces(tc["function"]["arguments"], reply.chunk_size):
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
        finish = reply.finish_reason or ("tool_calls" if tool_calls else "stop")

        def chunk(delta: dict, finish_reason: Optional[str]) -> dict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }

        events = [chunk(d, None) for d in deltas]
        events.append(chunk({}, finish))
        if model_family(model) == "claude":
            # Claude on Databricks: usage on every chunk, completion_tokens null until the last one.
            for ev in events:
                ev["usage"] = {"prompt_tokens": total["prompt_tokens"], "completion_tokens": None, "total_tokens": None}
            events[-1]["usage"] = dict(total)
            return events
        if reply.cumulative_usage:
            n = len(events)
            for k, ev in enumerate(events, start=1):
                comp = total["completion_tokens"] * k // n
                ev["usage"] = {
                    "prompt_tokens": total["prompt_tokens"],
                    "completion_tokens": comp,
                    "total_tokens": total["prompt_tokens"] + comp,
                }
            events[-1]["usage"] = dict(total)
        so = body.get("stream_options") or {}
        if so.get("include_usage"):
            ev = chunk({}, None)
            ev["choices"] = []
            ev["usage"] = dict(total)
            events.append(ev)
        return events

    def _embeddings_payload(self, emb: Embeddings, body: dict) -> dict:
        inp = body["input"]
        texts = [inp] if isinstance(inp, str) else list(inp)
        dim = emb.dim or self.embedding_dim
        if emb.vectors is not None:
            vectors = [list(v) for v in emb.vectors]
        else:
            vectors = [embed_text(t, dim) for t in texts]
        fmt = body.get("encoding_format")
        data = []
        for i, v in enumerate(vectors):
            value: Any = v
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(_count_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
