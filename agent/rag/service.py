"""``AnswerService``: the one answer pipeline behind ``kb ask``, ``kb chat``, the API's kb-rag and
``kb eval``.

    service = AnswerService.from_settings(settings, command="ask")
    answer = service.run("How many vacation days do I get?")               # -> Answer
    for kind, value in service.stream("and can I carry them over?", history=messages): ...
    async for kind, value in service.astream(question, history=messages, k=5): ...   # the API

Steps, the same on every surface:

1. condense: only when there is history (``KB_CHAT_HISTORY_TOKENS`` of it, whole turns, old
   ``[n]`` markers removed since they referred to other passages), the model rewrites the question
   into a standalone search query (streamed like every call, so its usage is reported);
2. retrieve: the retriever runs on that query (``k`` and ``mode`` per call when given);
3. relevance gate: ``agent.rag.retrieval.refusal`` declines, without an answer call, when nothing
   retrieved is relevant enough;
4. answer: the numbered, delimited passages and the question (plus the trimmed history and the
   standalone rewrite when there is history), streamed; if the endpoint says the request is too
   long, it is sent again with less history.

Access control: ``groups=`` (the API passes the caller's groups) restricts retrieval to what they may
read (``agent.rag.retrieval``); the relevance gate, the passages, the citations and the answer are
built from those passages only. ``None``: the retriever's own groups (the CLI's ``--as-groups``).

Events: ``("rewrite", str)`` (a follow-up's standalone query), ``("passages", [Document])``,
``("token", str)`` (the refusal text arrives as one token too) and last ``("done", Answer)``.
Every model call is counted in ``Answer.usage`` (the rewrite included) and failures are
translated by ``translate_failures``.

The steps are written once (``AnswerService._flow``, a generator that yields events and effects) and
carried out by two drivers: ``stream`` runs each effect in the calling thread, ``astream`` awaits it
(model calls async, retrieval in a worker thread). The effects are the only difference between them.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import Any, NamedTuple

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser

from agent.rag.chain import cited_sources
from agent.rag.history import is_context_overflow, shrinking, trim_history
from agent.rag.prompts import ANSWER_PROMPT, CHAT_PROMPT, CONDENSE_PROMPT, REWRITTEN_NOTE, format_passages, format_transcript
from agent.rag.answer import BELOW_FLOOR, NO_PASSAGES, Answer
from agent.rag.failures import translate_failures
from agent.rag.pages import by_page
from agent.rag.rerank import build_reranker, first_stage, second_stage, top_k
from agent.rag.retrieval import build_retriever, refusal
from agent.settings import Settings
from agent.usage.tokens import UsageCollector

Event = tuple[str, Any]
MAX_QUERY_CHARS = 500
_CITATION = re.compile(r"\s?\[\d+(?:\s*[,;]\s*\d+)*\]")


def clean_query(text: str, fallback: str) -> str:
    """The model's rewrite as one line of plain query text; the original question when it is empty."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    query = lines[0] if lines else ""
    query = re.sub(r"^(standalone (search )?(query|question)\s*:\s*)", "", query, flags=re.I).strip()
    query = query.strip("\"'“”` ").strip()
    return query[:MAX_QUERY_CHARS] if query else fallback


def as_messages(turns: Sequence[tuple[str, str] | BaseMessage]) -> list[BaseMessage]:
    """Earlier turns as user/assistant messages, their old ``[n]`` markers removed."""
    out: list[BaseMessage] = []
    for turn in turns:
        if isinstance(turn, BaseMessage):
            role, text = ("user" if isinstance(turn, HumanMessage) else "assistant"), turn.text
        else:
            role, text = turn
        text = text if isinstance(text, str) else str(text)
        out.append(HumanMessage(text) if role == "user" else AIMessage(_CITATION.sub("", text)))
    return out


def _transcript(history: Sequence[BaseMessage]) -> str:
    return format_transcript([("user" if isinstance(m, HumanMessage) else "assistant", m.text) for m in history])


class AnswerService:
    """The pipeline around one chat model and one retriever; build once, call per question (the
    runnables are built here, not per question: a new chain costs more CPU on its first run than a
    whole answer does afterwards)."""

    def __init__(self, settings: Settings, *, llm: Any, retriever: Any, limiter: Any = None, reranker: Any = None) -> None:
        self.settings = settings
        self.llm = llm
        self.retriever = retriever
        self.reranker = reranker  # the second stage (agent.rag.rerank; KB_RERANK), None: off
        self.limiter = limiter  # async retrieval: worker threads at once (an anyio CapacityLimiter)
        self.budget = settings.chat_history_tokens
        self.endpoint = settings.chat_endpoint
        self.base_url = settings.serving_base_url
        self._condense = (CONDENSE_PROMPT | llm | StrOutputParser()).with_config(run_name="condense_question")
        self._answer = (ANSWER_PROMPT | llm | StrOutputParser()).with_config(run_name="kb_answer")
        self._chat_answer = (CHAT_PROMPT | llm | StrOutputParser()).with_config(run_name="chat_answer")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        command: str,
        llm: Any = None,
        retriever: Any = None,
        k: int | None = None,
        mode: str | None = None,
        usage_extra: dict[str, str] | None = None,
    ) -> AnswerService:
        """The configured model and index (``command`` tags the usage ledger and ``usage_context``)."""
        if retriever is None:
            retriever = build_retriever(settings, k=k, command=command, mode=mode)
        if llm is None:
            from agent.databricks.llm import build_llm  # heavy: langchain_openai + openai, only when no llm is passed

            llm = build_llm(settings, command=command, usage_extra=usage_extra)
        reranker = build_reranker(settings, command=command, usage_extra=usage_extra)
        return cls(settings, llm=llm, retriever=retriever, reranker=reranker)

    # ------------------------------------------------------------ the steps shared by both paths

    def history(self, turns: Sequence[tuple[str, str] | BaseMessage]) -> list[BaseMessage]:
        """The earlier turns the pipeline uses: ``KB_CHAT_HISTORY_TOKENS`` of them, whole turns."""
        return trim_history(as_messages(turns), self.budget)

    def _retrieve(self, query: str, k: int | None, mode: str | None,
                  groups: frozenset[str] | None = None) -> list[Document]:
        """First stage: the passages, or with a reranker its candidates (CPU work: the query's
        embedding and the ranking)."""
        kwargs: dict[str, Any] = {}
        if mode:
            kwargs["mode"] = mode
        if groups is not None:
            kwargs["groups"] = groups
        return first_stage(self.retriever, self.reranker, query, k=k,
                           candidates=getattr(self.settings, "rerank_candidates", 20), **kwargs)

    def _rerank(self, query: str, pool: list[Document], k: int | None, config: dict[str, Any]) -> list[Document]:
        """Second stage (``KB_RERANK``): a model call, counted with the question's."""
        return second_stage(self.reranker, query, pool, top=top_k(self.retriever, k), config=config)

    def _answer_inputs(self, question: str, standalone: str | None, passages: list[Document]) -> Callable:
        text = format_passages(passages)
        note = REWRITTEN_NOTE.format(standalone=standalone) if standalone and standalone.strip() != question.strip() else ""

        def inputs(history: list[BaseMessage]) -> tuple[Any, dict[str, Any]]:
            if not history:
                return self._answer, {"question": question, "passages": text}
            return self._chat_answer, {"history": history, "passages": text, "question": question, "rewritten": note}

        return inputs

    def _gate(self, answer: Answer) -> str | None:
        declined = refusal(self.settings, answer.passages)
        if declined:
            answer.refused = True
            answer.refusal_reason = NO_PASSAGES if not answer.passages else BELOW_FLOOR
            answer.text = declined
        return declined

    def _failures(self, parts: list[str]) -> Any:
        return translate_failures(partial=lambda: "".join(parts), endpoint=self.endpoint, base_url=self.base_url)

    @staticmethod
    def _config(config: dict[str, Any] | None, usage: UsageCollector) -> dict[str, Any]:
        config = dict(config or {})
        config["callbacks"] = [*(config.get("callbacks") or []), usage]
        return config

    @staticmethod
    def _usage() -> UsageCollector:
        usage = UsageCollector()  # this question's calls; an enclosing collect_usage() sees them too
        usage.run_inline = True  # a cheap sum: no thread hop per callback event in async runs
        return usage

    # ------------------------------------------------------------ the flow, and its two drivers

    def _flow(self, question: str, history: Sequence[tuple[str, str] | BaseMessage], k: int | None,
              mode: str | None, groups: frozenset[str] | None, config: dict[str, Any], answer: Answer,
              parts: list[str]) -> Generator[Any, Any, None]:
        """The steps of one answer, written once for both drivers: it yields events (tuples) for the
        caller and effects (``_Collect``, ``_Retrieve``, ``_Rerank``, ``_Tokens``) that the driver carries out (``stream``
        in this thread, ``astream`` with await) and sends back the result of, or throws in the
        exception of. ``_Tokens`` streams the answer: the driver emits each token and adds it to ``parts``."""
        earlier = self.history(history)
        if earlier:
            mark = time.perf_counter()
            answer.standalone = yield from self._condensed(question, earlier, config)
            answer.timing["condense"] = time.perf_counter() - mark
            if answer.standalone != question:
                yield ("rewrite", answer.standalone)
        mark = time.perf_counter()
        query = answer.standalone or question
        found = yield _Retrieve(query, k, mode, groups)
        if self.reranker is not None:
            found = yield _Rerank(query, found, k, config)
        answer.passages = by_page(found)  # the passages grouped by page (agent.rag.pages)
        answer.timing["retrieve"] = time.perf_counter() - mark
        yield ("passages", answer.passages)
        declined = self._gate(answer)
        if declined:
            yield ("token", declined)
            return
        mark = time.perf_counter()
        inputs = self._answer_inputs(question, answer.standalone, answer.passages)
        attempts = shrinking(earlier, self.budget) if earlier else [[]]
        for n, attempt in enumerate(attempts):
            chain, values = inputs(attempt)
            try:
                yield _Tokens(chain, values, config)
                break
            except Exception as exc:
                if parts or n == len(attempts) - 1 or not is_context_overflow(exc):
                    raise
        answer.text = "".join(parts)
        answer.sources = cited_sources(answer.text, answer.passages)
        answer.timing["answer"] = time.perf_counter() - mark

    def _condensed(self, question: str, earlier: list[BaseMessage], config: dict[str, Any]) -> Generator[Any, Any, str]:
        """The standalone query, with less history each time the endpoint says the request is too long."""
        attempts = shrinking(earlier, self.budget)
        for n, attempt in enumerate(attempts):
            try:
                values = {"transcript": _transcript(attempt), "question": question}
                return clean_query((yield _Collect(self._condense, values, config)), question)
            except Exception as exc:
                if n == len(attempts) - 1 or not is_context_overflow(exc):
                    raise
        return question  # pragma: no cover

    def _start(self, question: str, config: dict[str, Any] | None
               ) -> tuple[float, UsageCollector, dict[str, Any], Answer, list[str]]:
        """What a driver starts with: the clock, this question's usage collector, the config that
        reports to it, the ``Answer`` being built and the streamed parts."""
        usage = self._usage()
        return time.perf_counter(), usage, self._config(config, usage), Answer(question=question), []

    @staticmethod
    def _finish(answer: Answer, usage: UsageCollector, started: float) -> tuple[str, Answer]:
        answer.usage = usage.totals()
        answer.timing["total"] = time.perf_counter() - started
        return ("done", answer)

    def stream(
        self,
        question: str,
        *,
        history: Sequence[tuple[str, str] | BaseMessage] = (),
        k: int | None = None,
        mode: str | None = None,
        config: dict[str, Any] | None = None,
        groups: frozenset[str] | None = None,
    ) -> Iterator[Event]:
        """The answer's events, model calls and retrieval in this thread (``kb ask``, ``kb chat``, ``kb eval``)."""
        started, usage, config, answer, parts = self._start(question, config)
        with self._failures(parts):
            flow = self._flow(question, history, k, mode, groups, config, answer, parts)
            reply: Any = None
            error: Exception | None = None
            while (step := _advance(flow, reply, error)) is not _DONE:
                reply, error = None, None
                try:
                    if isinstance(step, _Collect):
                        reply = "".join(step.chain.stream(step.values, step.config))
                    elif isinstance(step, _Retrieve):
                        reply = self._retrieve(*step)
                    elif isinstance(step, _Rerank):
                        reply = self._rerank(*step)
                    elif isinstance(step, _Tokens):
                        for token in step.chain.stream(step.values, step.config):
                            if token:
                                parts.append(token)
                                yield ("token", token)
                    else:
                        yield step
                except Exception as exc:
                    error = exc
        yield self._finish(answer, usage, started)

    def run(self, question: str, **kwargs: Any) -> Answer:
        """``stream`` to the end: the ``Answer``."""
        for kind, value in self.stream(question, **kwargs):
            if kind == "done":
                return value
        raise RuntimeError("the answer stream ended without a result")  # pragma: no cover

    async def astream(
        self,
        question: str,
        *,
        history: Sequence[tuple[str, str] | BaseMessage] = (),
        k: int | None = None,
        mode: str | None = None,
        config: dict[str, Any] | None = None,
        groups: frozenset[str] | None = None,
    ) -> AsyncIterator[Event]:
        """``stream`` for an event loop (the API): model calls are async, retrieval (CPU work: embedding
        the query, ranking) runs in a worker thread, at most ``limiter`` of them at once."""
        import anyio

        started, usage, config, answer, parts = self._start(question, config)
        with self._failures(parts):
            flow = self._flow(question, history, k, mode, groups, config, answer, parts)
            reply: Any = None
            error: Exception | None = None
            while (step := _advance(flow, reply, error)) is not _DONE:
                reply, error = None, None
                try:
                    if isinstance(step, _Collect):
                        reply = "".join([part async for part in step.chain.astream(step.values, step.config)])
                    elif isinstance(step, _Retrieve):
                        reply = await anyio.to_thread.run_sync(self._retrieve, *step, limiter=self.limiter)
                    elif isinstance(step, _Rerank):  # a model call: not in the CPU-bound retrieval limiter
                        reply = await anyio.to_thread.run_sync(self._rerank, *step)
                    elif isinstance(step, _Tokens):
                        async for token in step.chain.astream(step.values, step.config):
                            if token:
                                parts.append(token)
                                yield ("token", token)
                    else:
                        yield step
                except Exception as exc:
                    error = exc
        yield self._finish(answer, usage, started)


_DONE = object()


def _advance(flow: Generator[Any, Any, None], reply: Any, error: Exception | None) -> Any:
    """The flow's next event or effect, after sending it ``reply`` (or throwing in ``error``); ``_DONE``
    when it has finished."""
    try:
        return flow.throw(error) if error is not None else flow.send(reply)
    except StopIteration:
        return _DONE


class _Collect(NamedTuple):
    """Effect: run ``chain`` on ``values`` and send back its whole text (the condense call, streamed
    so that its usage is reported)."""

    chain: Any
    values: dict[str, Any]
    config: dict[str, Any]


class _Retrieve(NamedTuple):
    """Effect: ``AnswerService._retrieve`` (the first stage) with these arguments; sends back the passages."""

    query: str
    k: int | None
    mode: str | None
    groups: frozenset[str] | None


class _Rerank(NamedTuple):
    """Effect: ``AnswerService._rerank`` (the second stage, a model call); sends back the passages."""

    query: str
    pool: list[Document]
    k: int | None
    config: dict[str, Any]


class _Tokens(NamedTuple):
    """Effect: stream ``chain`` on ``values``, each token an event and a part of the answer."""

    chain: Any
    values: dict[str, Any]
    config: dict[str, Any]
