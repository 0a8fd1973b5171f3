"""What the routes call: the index, one chat model per caller, and answer runs.

- The retriever is opened once (lazily, in a worker thread, warmed at start-up) and shared; ``k``
  is passed per call. If the index is missing the request gets 503 and the next one tries again.
- One ``DatabricksChatOpenAI`` per (caller, model, overrides such as ``max_tokens``), built with
  ``usage_extra={"caller": name, "model": ...}`` so every Databricks request is attributed to the
  API key's name. They share one async HTTP client per event loop (connections are reused across
  requests and callers). Their synchronous callback handlers (the usage ledger) are adapted so a
  streamed token does not cost a thread hop (``_LoopFriendly``).
- An answer is produced by a background task (``AnswerRun``) that the route reads events from:
  ``("passages", [Document])``, ``("token", str)``, ``("step", dict)`` and finally
  ``("done", Done)``. Remote failures arrive as the project's errors (``RemoteError`` family;
  ``StreamInterruptedError`` after the first token). Closing the run cancels the work; the
  concurrency slot is released when the work has really ended.

kb-rag is ``agent.chain.build_rag_chain`` (built once per model, reused) run with ``astream``: fully
async, so 64 concurrent streams cost 64 coroutines, not 64 threads; retrieval runs in a worker
thread first, and a question the index does not cover is declined without a model call, as in
``kb ask``. Earlier messages are condensed with the question into a standalone question first
(``agent.prompts.CONDENSE_PROMPT``). kb-agent is
``agent.assistant.run_assistant`` in a worker thread, its events bridged to the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document

from agent.errors import KbError, chat_failure
from agent.settings import Settings

log = logging.getLogger("kb.api")

Emit = Callable[[tuple[str, Any]], None]
HISTORY_TURNS = 12  # earlier messages given to the question condenser
HISTORY_CHARS = 2000  # per earlier message
MAX_CACHED_MODELS = 128
PASSAGES_KEY = "kb_passages"
_CITATION = re.compile(r"\s?\[\d+(?:\s*[,;]\s*\d+)*\]")  # old [n] markers referred to other passages


@dataclass
class Done:
    question: str
    answer: str
    passages: list[Document] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    standalone: str | None = None
    refused: bool = False


class AnswerRun:
    """An answer produced by a background task; ``async for kind, value in run`` reads its events."""

    def __init__(self, producer: Callable[[Emit], Awaitable[Done]], on_finished: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._finished = False
        self._task = asyncio.get_running_loop().create_task(self._main(producer))
        self._task.add_done_callback(lambda _task: on_finished())

    async def _main(self, producer: Callable[[Emit], Awaitable[Done]]) -> None:
        try:
            done = await producer(self._queue.put_nowait)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, which reports it
            self._queue.put_nowait(("error", exc))
        else:
            self._queue.put_nowait(("done", done))

    def __aiter__(self) -> AnswerRun:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        if self._finished:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == "error":
            self._finished = True
            raise value
        if kind == "done":
            self._finished = True
        return kind, value

    async def collect(self) -> Done:
        async for kind, value in self:
            if kind == "done":
                return value
        raise RuntimeError("answer run ended without a result")  # pragma: no cover

    def close(self) -> None:
        """Stop the work (a no-op once it has finished)."""
        self._finished = True
        if not self._task.done():
            self._task.cancel()


class Backend:
    def __init__(self, settings: Settings, *, llm: Any = None, retriever: Any = None) -> None:
        self.settings = settings
        self._llm_override = llm
        self._retriever = retriever
        self._retriever_lock = threading.Lock()
        self._retrieval_limiter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: Any = None
        self._llms: dict[tuple[str, str], Any] = {}
        self._assistants: dict[int, tuple[Any, Any]] = {}
        self._chains: dict[int, tuple[Any, Any]] = {}
        self._assistant_lock = threading.Lock()

    # ------------------------------------------------------------ index

    def retriever(self) -> Any:
        """The shared retriever, opened on first use (blocking: call from a worker thread)."""
        if self._retriever is None:
            with self._retriever_lock:
                if self._retriever is None:
                    from agent.retrieval import build_retriever

                    self._retriever = build_retriever(self.settings, command="serve")
        return self._retriever

    def retrieve(self, query: str, k: int, mode: str | None = None) -> list[Document]:
        """Passages for a query (blocking: call from a worker thread)."""
        kwargs: dict[str, Any] = {"k": k}
        if mode:
            kwargs["mode"] = mode
        return list(self.retriever().invoke(query, **kwargs))

    async def aretrieve(self, query: str, k: int, mode: str | None = None) -> list[Document]:
        """``retrieve`` in a worker thread, at most as many at once as there are cores: retrieval
        is CPU work (embedding the query, ranking), so more threads would only contend."""
        import anyio

        if self._retrieval_limiter is None:
            self._retrieval_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
        return await anyio.to_thread.run_sync(self.retrieve, query, k, mode, limiter=self._retrieval_limiter)

    search = aretrieve

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
        """Build each caller's kb-rag model and chain now (imports, TLS setup, schemas: over a second
        of CPU on first use) so that no caller's first request pays it. Calls nothing remote.
        Call from the event loop."""
        if self._llm_override is not None or not self.settings.llm_configured:
            return
        try:
            for caller in callers:
                self._rag_chain(self.llm(caller, "kb-rag", {}))
            self.assistant_module()
        except Exception:  # the request that needs it will report the problem
            log.exception("preparing the chat models failed")

    def check_index(self) -> str | None:
        """None when the index opens and has chunks, else why not (one line)."""
        try:
            retriever = self.retriever()
            store = getattr(retriever, "store", None)
            if store is not None and store._collection.count() == 0:
                return "the index is empty: run 'kb ingest'"
        except KbError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------ models

    def llm(self, caller: str, model: str, overrides: dict[str, Any] | None = None) -> Any:
        """The chat model for this caller (call from the event loop); ``overrides`` such as
        ``max_tokens`` give a model of their own (a few distinct ones are kept)."""
        if self._llm_override is not None:
            return self._llm_override
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to a loop; a new loop gets new ones
            from agent.databricks.transport import async_client

            self._loop, self._llms, self._assistants, self._chains = loop, {}, {}, {}
            self._http = async_client(self.settings)
        key = (caller, model, tuple(sorted((overrides or {}).items())))
        if key not in self._llms:
            from agent.llm import build_llm

            if len(self._llms) >= MAX_CACHED_MODELS:
                self._llms.clear()
            llm = build_llm(
                self.settings, command="serve", usage_extra={"caller": caller, "model": model},
                http_async_client=self._http, **(overrides or {}),
            )
            llm.callbacks = [_LoopFriendly(h) if _is_sync_handler(h) else h for h in (llm.callbacks or [])]
            self._llms[key] = llm
        return self._llms[key]

    async def aclose(self) -> None:
        if _PENDING:  # ledger writes still running: let them finish (briefly)
            await asyncio.wait(list(_PENDING), timeout=5)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------ kb-rag

    def rag_run(
        self,
        *,
        question: str,
        history: list[tuple[str, str]],
        caller: str,
        k: int,
        llm_kwargs: dict[str, Any],
        on_finished: Callable[[], None],
        mode: str | None = None,
    ) -> AnswerRun:
        llm = self.llm(caller, "kb-rag")

        async def produce(emit: Emit) -> Done:
            from agent.api.sources import chat_sources
            from agent.retrieval import refusal
            from agent.tokens import collect_usage

            config: dict[str, Any] = {"metadata": {"caller": caller}}
            parts: list[str] = []
            standalone = None
            with collect_usage() as usage:  # this task's model calls only (a context of its own)
                usage.run_inline = True  # a cheap sum: no thread hop per callback event
                try:
                    if history:
                        standalone = await self._condense(llm, history, question, config)
                    query = standalone or question
                    passages = await self.aretrieve(query, k, mode)
                    emit(("passages", passages))
                    declined = refusal(self.settings, passages)
                    if declined:  # nothing relevant enough: say so rather than let the model guess
                        emit(("token", declined))
                        return Done(question=question, answer=declined, passages=passages, usage={},
                                    standalone=standalone, refused=True)
                    chain = self._rag_chain(self.llm(caller, "kb-rag", llm_kwargs))
                    run_config = {**config, "configurable": {PASSAGES_KEY: passages}}
                    async for piece in chain.astream({"question": query}, config=run_config):
                        if piece.get("answer"):
                            parts.append(piece["answer"])
                            emit(("token", piece["answer"]))
                except KbError:
                    raise
                except Exception as exc:
                    raise self._remote(exc, parts) from None
            answer = "".join(parts)
            return Done(
                question=question, answer=answer, passages=passages, sources=chat_sources(answer, passages),
                usage=usage.totals(), standalone=standalone,
            )

        return AnswerRun(produce, on_finished)

    def _rag_chain(self, llm: Any) -> Any:
        """``build_rag_chain`` around this model, built once and reused: a new chain costs more CPU on
        its first run than a whole answer does afterwards. Its retriever hands over the passages this
        request retrieved (``configurable[PASSAGES_KEY]``)."""
        entry = self._chains.get(id(llm))
        if entry is None or entry[0] is not llm:
            from langchain_core.runnables import RunnableLambda

            from agent.chain import build_rag_chain

            def given(_question: str, config: dict) -> list[Document]:
                return config["configurable"][PASSAGES_KEY]

            async def agiven(_question: str, config: dict) -> list[Document]:
                return config["configurable"][PASSAGES_KEY]

            passages = RunnableLambda(given, afunc=agiven, name="kb_passages")
            if len(self._chains) >= MAX_CACHED_MODELS:
                self._chains.clear()
            entry = self._chains[id(llm)] = (llm, build_rag_chain(self.settings, llm=llm, retriever=passages))
        return entry[1]

    async def _condense(self, llm: Any, history: list[tuple[str, str]], question: str, config: dict) -> str:
        from langchain_core.output_parsers import StrOutputParser

        from agent.conversation import clean_query
        from agent.prompts import CONDENSE_PROMPT, format_transcript

        turns = [(role, _CITATION.sub("", text)[:HISTORY_CHARS]) for role, text in history[-HISTORY_TURNS:]]
        condense = CONDENSE_PROMPT | llm.bind(max_tokens=256) | StrOutputParser()
        text = await condense.ainvoke({"transcript": format_transcript(turns), "question": question}, config=config)
        return clean_query(str(text), question)

    def _remote(self, exc: BaseException, parts: list[str]) -> BaseException:
        return chat_failure(exc, partial="".join(parts), endpoint=self.settings.chat_endpoint,
                            base_url=self.settings.serving_base_url)

    # ------------------------------------------------------------ kb-agent

    def assistant_module(self) -> Any:
        """``agent.assistant`` if it is available, else None."""
        try:
            import agent.assistant as module
        except ImportError as exc:
            if exc.name in ("agent.assistant", "langchain.agents"):
                return None
            raise
        if not (hasattr(module, "build_assistant") and hasattr(module, "run_assistant")):
            return None
        return module

    def _assistant(self, module: Any, llm: Any) -> Any:
        """The assistant graph around this chat model (built once per model: compiling costs)."""
        with self._assistant_lock:
            key = id(llm)
            entry = self._assistants.get(key)
            if entry is None or entry[0] is not llm:
                if len(self._assistants) >= MAX_CACHED_MODELS:
                    self._assistants.clear()
                graph = module.build_assistant(self.settings, llm=llm, retriever=self.retriever())
                entry = self._assistants[key] = (llm, graph)
            return entry[1]

    def agent_run(
        self,
        *,
        messages: list[dict[str, str]],
        caller: str,
        llm_kwargs: dict[str, Any],
        on_finished: Callable[[], None],
    ) -> AnswerRun:
        import anyio

        module = self.assistant_module()
        if module is None:
            from agent.api.errors import ApiError

            raise ApiError(503, "assistant not available: model 'kb-agent' is not installed on this server; use kb-rag",
                           code="model_unavailable", param="model")
        llm = self.llm(caller, "kb-agent", llm_kwargs)
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")

        async def produce(emit: Emit) -> Done:
            def on_event(event: dict[str, Any]) -> None:
                if cancelled.is_set():
                    raise _Cancelled()
                if event.get("type") == "token":
                    loop.call_soon_threadsafe(emit, ("token", event.get("text") or ""))
                else:
                    loop.call_soon_threadsafe(emit, ("step", dict(event)))

            def work() -> dict[str, Any]:
                assistant = self._assistant(module, llm)
                return module.run_assistant(
                    assistant, messages, on_event, endpoint=self.settings.chat_endpoint,
                    base_url=self.settings.serving_base_url,
                )

            try:
                result = await anyio.to_thread.run_sync(work, limiter=self._limiter())
            except asyncio.CancelledError:
                cancelled.set()
                raise
            except KbError:
                raise
            except Exception as exc:
                raise self._remote(exc, []) from None
            answer = result.get("answer") or ""
            finish = "stop"
            if result.get("stopped"):
                answer, finish = result.get("message") or answer, "length"
            return Done(
                question=question, answer=answer, sources=list(result.get("sources") or []),
                usage=dict(result.get("usage") or {}), steps=list(result.get("steps") or []), finish_reason=finish,
            )

        run = AnswerRun(produce, on_finished)
        original_close = run.close

        def close() -> None:
            cancelled.set()  # the worker thread stops at its next event
            original_close()

        run.close = close  # type: ignore[method-assign]
        return run

    def _limiter(self) -> Any:
        import anyio

        if getattr(self, "_capacity", None) is None:
            self._capacity = anyio.CapacityLimiter(self.settings.api_max_concurrency)
        return self._capacity


class _Cancelled(Exception):
    """Raised inside the assistant's thread when the client went away."""


def _is_sync_handler(handler: Any) -> bool:
    from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

    return isinstance(handler, BaseCallbackHandler) and not isinstance(handler, AsyncCallbackHandler) \
        and not getattr(handler, "run_inline", False)


def _loop_friendly_base() -> type:
    from langchain_core.callbacks import AsyncCallbackHandler

    return AsyncCallbackHandler


class _LoopFriendly(_loop_friendly_base()):  # type: ignore[misc]
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
