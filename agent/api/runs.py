"""Per-request answer runs: the work of one chat completion or ``/api/ask``, in a background task.

``async for kind, value in run`` reads its events: ``("rewrite", str)``, ``("passages", [Document])``,
``("token", str)``, ``("step", dict)`` (kb-agent's tool calls and results) and last
``("done", Answer)``. Remote failures arrive as the project's errors (``RemoteError`` family;
``StreamInterruptedError`` after the first token). ``close()`` cancels the work; the concurrency
slot (``on_finished``) is released when the work has really ended.

- ``rag_run``: kb-rag is the answer service's ``astream`` (``agent.rag.service``): fully async, so
  64 concurrent streams cost 64 coroutines, not 64 threads.
- ``agent_run``: kb-agent is ``agent.assistant.service.run_assistant`` in a worker thread, its events
  bridged to the loop; closing the run stops the thread at its next event.

Both read only what the caller's ``groups`` may read (``ingest.access``), and a finished run writes one
audit row (``audit_sources``: the caller, its groups, the surface and the sources it was shown).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from agent.api.backend import ModelCache
from agent.rag.answer import Answer
from agent.rag.failures import translate_failures
from agent.usage.ledger import open_ledger

Event = tuple[str, Any]


class AnswerRun:
    """An answer produced by a background task from an async stream of events."""

    def __init__(
        self,
        events: Callable[[], AsyncIterator[Event]],
        on_finished: Callable[[], None],
        on_close: Callable[[], None] | None = None,
        on_done: Callable[[Answer], None] | None = None,
    ) -> None:
        self._on_done = on_done
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._finished = False
        self._on_close = on_close
        self._task = asyncio.get_running_loop().create_task(self._main(events))
        self._task.add_done_callback(lambda _task: on_finished())

    async def _main(self, events: Callable[[], AsyncIterator[Event]]) -> None:
        try:
            async for event in events():
                self._queue.put_nowait(event)
                if event[0] == "done":
                    if self._on_done is not None:  # the audit row, off the loop (a ledger write)
                        asyncio.get_running_loop().run_in_executor(None, self._on_done, event[1])
                    return
            raise RuntimeError("answer run ended without a result")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, which reports it
            self._queue.put_nowait(("error", exc))

    def __aiter__(self) -> AnswerRun:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == "error":
            self._finished = True
            raise value
        if kind == "done":
            self._finished = True
        return kind, value

    async def collect(self) -> Answer:
        async for kind, value in self:
            if kind == "done":
                return value
        raise RuntimeError("answer run ended without a result")  # pragma: no cover

    def close(self) -> None:
        """Stop the work (a no-op once it has finished)."""
        self._finished = True
        if self._on_close is not None:
            self._on_close()
        if not self._task.done():
            self._task.cancel()


def rag_run(
    models: ModelCache,
    *,
    question: str,
    history: Sequence[tuple[str, str]],
    caller: str,
    k: int,
    overrides: dict[str, Any],
    on_finished: Callable[[], None],
    mode: str | None = None,
    groups: frozenset[str] = frozenset(),
    surface: str = "kb-rag",
) -> AnswerRun:
    """kb-rag (and ``/api/ask``): the one answer pipeline, for this caller's model and groups."""
    service = models.rag_service(caller, overrides, groups)
    config = {"metadata": {"caller": caller}}
    return AnswerRun(
        lambda: service.astream(question, history=history, k=k, mode=mode, config=config, groups=groups),
        on_finished, on_done=lambda answer: audit_sources(models, caller, surface, groups, answer_sources(answer)),
    )


def answer_sources(answer: Answer) -> list[str]:
    """The sources an answer showed its caller: its passages', its citations' and (kb-agent) its tools'."""
    names = [str(d.metadata.get("source")) for d in answer.passages]
    names += [str(s.get("source")) for s in answer.sources or [] if s.get("source")]
    names += [str(s.get("source")) for s in answer.consulted or [] if isinstance(s, dict) and s.get("source")]
    return list(dict.fromkeys(names))


def audit_sources(models: ModelCache, caller: str, surface: str, groups: frozenset[str], sources: list[str]) -> None:
    """One audit row in the usage ledger (``agent.usage.ledger``; none when it is turned off)."""

    ledger = open_ledger(models.settings)
    if ledger is not None:
        ledger.audit(caller=caller, surface=surface, groups=groups, sources=sources)


class _Cancelled(Exception):
    """Raised inside the assistant's thread when the client went away."""


def agent_run(
    models: ModelCache,
    *,
    messages: list[dict[str, str]],
    caller: str,
    overrides: dict[str, Any],
    on_finished: Callable[[], None],
    groups: frozenset[str] = frozenset(),
    surface: str = "kb-agent",
) -> AnswerRun:
    """kb-agent: ``run_assistant`` in a worker thread; its events come to the loop. Its tools search,
    list and read only what ``groups`` may read."""
    from agent.assistant.service import run_assistant  # heavy: langchain agents + langgraph, kb-agent only

    settings = models.settings
    assistant = models.assistant_factory(caller, overrides, groups)
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    async def events() -> AsyncIterator[Event]:
        import anyio

        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_event(event: dict[str, Any]) -> None:
            if cancelled.is_set():
                raise _Cancelled()
            if event.get("type") == "token":
                loop.call_soon_threadsafe(queue.put_nowait, ("token", event.get("text") or ""))
            else:
                loop.call_soon_threadsafe(queue.put_nowait, ("step", dict(event)))

        def work() -> Answer:
            with translate_failures(endpoint=settings.chat_endpoint, base_url=settings.serving_base_url):
                return run_assistant(assistant(), messages, on_event, endpoint=settings.chat_endpoint,
                                     base_url=settings.serving_base_url)

        async def in_thread() -> Answer:
            try:
                return await anyio.to_thread.run_sync(work, limiter=models.run_limiter())
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        task = loop.create_task(in_thread())
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    break
                yield kind, value
            answer = await task
        except asyncio.CancelledError:
            cancelled.set()  # the worker thread stops at its next event ...
            await asyncio.wait([task])  # ... and the run ends (its slot released) only when it has
            raise
        if answer.stopped:
            answer.text = answer.message or answer.text
        yield "done", answer

    return AnswerRun(events, on_finished, on_close=cancelled.set,
                     on_done=lambda answer: audit_sources(models, caller, surface, groups, answer_sources(answer)))


async def resume(early: list, run: AnswerRun) -> AsyncIterator[tuple[str, Any]]:
    """The events a route already read from ``run`` (to answer a failure with an HTTP status before
    the stream starts), then the rest of the run; nothing more once ``done`` was among them."""
    for item in early:
        yield item
    if early and early[-1][0] == "done":
        return
    async for item in run:
        yield item
