"""What lives as long as the server: the index, the chat models and the services built on them.

``ModelCache`` holds
- the retriever, opened once (lazily, in a worker thread, warmed at start-up) and shared; ``k`` is
  passed per call. If the index is missing the request gets 503 and the next one tries again;
- one ``DatabricksChatOpenAI`` per (caller, model, overrides such as ``max_tokens``), built with
  ``usage_extra={"caller": name, "model": ...}`` so every Databricks request is attributed to the
  API key's name, and beside it what is built on that model: the answer service
  (``agent.rag.service.AnswerService``, kb-rag) and the assistant graph (kb-agent). Everything that
  changes an answer is in the key, the caller and the caller's groups included (what it may read:
  ``ingest.access``); retrieval gets the groups on every call, and the shared retriever's own default
  is "public documents only", so a call that forgot them could never see more;
- one async HTTP client per event loop (``agent.databricks.transport.async_client``), shared by the
  models: connections are reused across requests and callers. A new loop gets new clients and models.

The models' synchronous callback handlers (the usage ledger) are adapted so a streamed token does
not cost a thread hop (``_LoopFriendly``). Each request is a run of its own (``agent.api.runs``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document

from agent.databricks.llm import build_llm
from agent.databricks.transport import async_client
from agent.errors import KbError
from agent.rag.retrieval import build_retriever
from agent.rag.service import AnswerService
from agent.settings import Settings

log = logging.getLogger("kb.api")

MAX_CACHED_MODELS = 128

ModelKey = tuple[str, str, tuple[tuple[str, Any], ...], tuple[str, ...]]  # (caller, model, overrides, groups)
NO_GROUPS: frozenset[str] = frozenset()  # only what everyone may read


@dataclass
class _Entry:
    """One chat model and what is built on it (built on first use: compiling costs CPU)."""

    llm: Any
    service: AnswerService | None = None
    assistant: Any = None


class ModelCache:
    def __init__(self, settings: Settings, *, llm: Any = None, retriever: Any = None) -> None:
        self.settings = settings
        self._llm_override = llm
        self._retriever = retriever
        self._retriever_lock = threading.Lock()
        self._assistant_lock = threading.Lock()
        self._retrieval_limiter: Any = None
        self._run_limiter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: Any = None
        self._entries: dict[ModelKey, _Entry] = {}

    # ------------------------------------------------------------ index

    def retriever(self) -> Any:
        """The shared retriever, opened on first use (blocking: call from a worker thread)."""
        if self._retriever is None:
            with self._retriever_lock:
                if self._retriever is None:
                    self._retriever = build_retriever(self.settings, command="serve", groups=NO_GROUPS)
        return self._retriever

    def retrieve(self, query: str, k: int, mode: str | None = None, groups: frozenset[str] = NO_GROUPS) -> list[Document]:
        """Passages for a query that ``groups`` may read (blocking: call from a worker thread)."""
        kwargs: dict[str, Any] = {"k": k, "groups": frozenset(groups)}
        if mode:
            kwargs["mode"] = mode
        return list(self.retriever().invoke(query, **kwargs))

    def retrieval_limiter(self) -> Any:
        """Retrieval is CPU work (embedding the query, ranking): at most as many worker threads at
        once as there are cores, more would only contend."""
        import anyio

        if self._retrieval_limiter is None:
            self._retrieval_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
        return self._retrieval_limiter

    def run_limiter(self) -> Any:
        """Worker threads for assistant runs (one per run)."""
        import anyio

        if self._run_limiter is None:
            self._run_limiter = anyio.CapacityLimiter(self.settings.api_max_concurrency)
        return self._run_limiter

    async def search(self, query: str, k: int, mode: str | None = None, *,
                     groups: frozenset[str] = NO_GROUPS) -> list[Document]:
        """``retrieve`` in a worker thread (``retrieval_limiter``)."""
        import anyio

        return await anyio.to_thread.run_sync(self.retrieve, query, k, mode, groups, limiter=self.retrieval_limiter())

    @property
    def search_mode(self) -> str | None:
        return getattr(self._retriever, "mode", None) or getattr(self.settings, "search_mode", None)

    def warm(self) -> None:
        """Open the index and load the embedding model now rather than on the first request."""
        try:
            self.retrieve("warm up", 1)
        except KbError as exc:
            log.warning("index not ready: %s", exc)
        except Exception:  # the server still starts: /readyz and each request say what is wrong
            log.exception("warming up the index failed")

    def warm_models(self, callers: list[str]) -> None:
        """Build each caller's kb-rag model and answer service now (imports, TLS setup, schemas: over
        a second of CPU on first use) so that no caller's first request pays it. Calls nothing
        remote. Call from the event loop."""
        if self._llm_override is not None or not self.settings.llm_configured:
            return
        try:
            for caller in callers:
                self.rag_service(caller, {}, frozenset(self.settings.api_key_groups.get(caller, frozenset())))
        except Exception:  # the request that needs it will report the problem
            log.exception("preparing the chat models failed")

    def check_index(self) -> str | None:
        """None when the index opens and has chunks, else why not (one line)."""
        try:
            retriever = self.retriever()
            store = getattr(retriever, "store", None)
            if store is not None and store.count() == 0:
                return "the index is empty: run 'kb ingest'"
        except KbError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------ models and what is built on them

    def _entry(self, caller: str, model: str, overrides: dict[str, Any] | None,
               groups: frozenset[str] = NO_GROUPS) -> _Entry:
        """Call from the event loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to a loop; a new loop gets new ones
            self._loop, self._entries = loop, {}
            if self._llm_override is None:
                self._http = async_client(self.settings)
        key: ModelKey = (caller, model, tuple(sorted((overrides or {}).items())), tuple(sorted(groups)))
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= MAX_CACHED_MODELS:
                self._entries.clear()
            entry = self._entries[key] = _Entry(self._llm_override or self._build_llm(caller, model, overrides))
        return entry

    def _build_llm(self, caller: str, model: str, overrides: dict[str, Any] | None) -> Any:
        llm = build_llm(
            self.settings, command="serve", usage_extra={"caller": caller, "model": model},
            http_async_client=self._http, **(overrides or {}),
        )
        llm.callbacks = [_LoopFriendly(h) if _is_sync_handler(h) else h for h in (llm.callbacks or [])]
        return llm

    def llm(self, caller: str, model: str, overrides: dict[str, Any] | None = None) -> Any:
        """The chat model for this caller (call from the event loop)."""
        return self._entry(caller, model, overrides).llm

    def rag_service(self, caller: str, overrides: dict[str, Any] | None = None,
                    groups: frozenset[str] = NO_GROUPS) -> AnswerService:
        """kb-rag for this caller, its groups and overrides (call from the event loop). Its retriever
        opens the shared index on first use, in the service's worker thread; pass the same ``groups``
        to its ``astream``."""
        entry = self._entry(caller, "kb-rag", overrides, groups)
        if entry.service is None:
            from agent.rag.rerank import build_reranker

            reranker = None if self._llm_override else build_reranker(  # KB_RERANK: counted as this caller's
                self.settings, command="serve", usage_extra={"caller": caller, "model": "kb-rag"})
            entry.service = AnswerService(self.settings, llm=entry.llm, retriever=_SharedRetriever(self),
                                          limiter=self.retrieval_limiter(), reranker=reranker)
        return entry.service

    def assistant_factory(self, caller: str, overrides: dict[str, Any] | None = None,
                          groups: frozenset[str] = NO_GROUPS) -> Any:
        """A function giving kb-agent's graph for this caller and its groups (its tools search, list and
        read only what they may read); call it from a worker thread: the first call opens the index
        and compiles the graph."""
        entry = self._entry(caller, "kb-agent", overrides, groups)

        def assistant() -> Any:
            with self._assistant_lock:
                if entry.assistant is None:
                    from agent.assistant.service import build_assistant  # heavy: langchain agents + langgraph, kb-agent only

                    entry.assistant = build_assistant(self.settings, llm=entry.llm, retriever=self.retriever(),
                                                      groups=frozenset(groups))
                return entry.assistant

        return assistant

    async def aclose(self) -> None:
        if _PENDING:  # ledger writes still running: let them finish (briefly)
            await asyncio.wait(list(_PENDING), timeout=5)
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class _SharedRetriever:
    """The server's one retriever, opened on first use (``invoke`` runs in a worker thread)."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    def invoke(self, query: str, **kwargs: Any) -> list[Document]:
        return list(self.cache.retriever().invoke(query, **kwargs))


def _is_sync_handler(handler: Any) -> bool:
    return isinstance(handler, BaseCallbackHandler) and not isinstance(handler, AsyncCallbackHandler) \
        and not getattr(handler, "run_inline", False)


class _LoopFriendly(AsyncCallbackHandler):
    """A sync callback handler (the usage ledger's recorder) adapted for async runs.

    Run as it is, LangChain would hand every one of its events, one per streamed token, to a thread
    pool: a thread hop per token per handler, most of a request's CPU under load. Here the cheap
    per-token events run inline on the loop and only the end of a call (a ledger write) goes to a
    thread."""

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self.handler = handler
        self.raise_error = getattr(handler, "raise_error", False)

    # Only model events are forwarded (the recorder handles nothing else).
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True  # type: ignore[assignment]

    async def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.handler.on_chat_model_start(*args, **kwargs)

    async def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
        self.handler.on_llm_start(*args, **kwargs)

    async def on_llm_new_token(self, *args: Any, **kwargs: Any) -> None:
        self.handler.on_llm_new_token(*args, **kwargs)

    async def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self._in_background(self.handler.on_llm_end, *args, **kwargs)

    async def on_llm_error(self, *args: Any, **kwargs: Any) -> None:
        self._in_background(self.handler.on_llm_error, *args, **kwargs)

    def _in_background(self, method: Any, *args: Any, **kwargs: Any) -> None:
        """The ledger write runs in a thread and the answer does not wait for it (a WAL checkpoint's
        fsync must not hold a stream's last chunk)."""
        future = asyncio.get_running_loop().run_in_executor(None, functools.partial(method, *args, **kwargs))
        _PENDING.add(future)
        future.add_done_callback(_finished_in_background)


_PENDING: set[Any] = set()


def _finished_in_background(future: Any) -> None:
    _PENDING.discard(future)
    if not future.cancelled() and future.exception() is not None:
        log.warning("recording a model call failed: %s", future.exception())
