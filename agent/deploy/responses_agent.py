"""``KbResponsesAgent``: kb-rag and kb-agent as an MLflow ``ResponsesAgent`` (``predict`` and
``predict_stream``), for Mosaic AI Agent Framework endpoints (``databricks.agents.deploy``).

It runs the same code as ``kb serve``: kb-rag is ``agent.rag.service.AnswerService`` (condense,
retrieve, refusal gate, answer), kb-agent is ``agent.assistant.service`` (the tool assistant). The
model's configuration (``model_config`` at ``log_model`` time, see ``agent.deploy.logging``) says
which and holds the non-secret settings (endpoints, index, search mode); credentials come from the
serving environment through the Databricks SDK's unified authentication, as everywhere in kb.

- Input: the Responses ``input`` (``agent.deploy.messages.text_messages``), ``custom_inputs.k``
  (passages to retrieve), ``context.user_id`` (the caller in ``usage_context``), and
  ``max_output_tokens`` / ``temperature`` under the same ceiling as the API (``KB_API_MAX_TOKENS``).
- Output: one assistant message item (``output_text``); ``custom_outputs`` has the cited
  ``sources``, ``usage`` and, for kb-agent, ``steps``. Streaming yields
  ``response.output_text.delta`` events and one ``response.output_item.done``.
- Tracing: ``predict``/``predict_stream`` are AGENT spans (``ResponsesAgent`` does that); every
  retrieval is a RETRIEVER span whose output is the retrieved documents (``page_content``,
  ``metadata`` with ``doc_uri``), which MLflow's retrieval judges read; every chat model call is a
  CHAT_MODEL span (MLflow's LangChain tracer in the runs' config; not handed on to the retriever, so
  a retrieval is traced once).
"""

from __future__ import annotations

import contextvars
import queue
import threading
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import mlflow
from langchain_core.runnables import Runnable
from mlflow.entities import SpanType
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse, ResponsesAgentStreamEvent

from agent.databricks.llm import build_llm
from agent.deploy.messages import text_messages
from agent.rag.failures import translate_failures
from agent.rag.retrieval import build_retriever
from agent.rag.service import AnswerService
from agent.settings import load_settings
from ingest.embeddings.weights import MINILM, use_model_folder

MODELS = ("kb-rag", "kb-agent")
MAX_CALLERS = 32  # chat models kept, one per caller (usage_context names the caller)
ANONYMOUS = "anonymous"


class TracedRetriever:
    """A retriever whose every search is an MLflow RETRIEVER span with the documents as its output."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def invoke(self, query: str, **kwargs: Any) -> list[Any]:
        from mlflow.entities import Document as TracedDocument

        with mlflow.start_span(name="retrieve", span_type=SpanType.RETRIEVER) as span:
            span.set_inputs({"query": query, **kwargs})
            # This span is the retrieval's one: LangChain's tracer (on the model calls, inherited
            # by a tool's search through LangChain's context) is not handed on to the retriever.
            documents = list(self.inner.invoke(query, config={"callbacks": []}, **kwargs)
                             if isinstance(self.inner, Runnable) else self.inner.invoke(query, **kwargs))
            traced = []
            for document in documents:
                item = TracedDocument.from_langchain_document(document)
                item.metadata.setdefault("doc_uri", str(document.metadata.get("source") or ""))
                traced.append(item.to_dict())
            span.set_outputs(traced)
        return documents

    def __getattr__(self, name: str) -> Any:  # store, mode...: the wrapped retriever's
        return getattr(self.inner, name)


def caller_of(request: ResponsesAgentRequest) -> str:
    """The caller for ``usage_context``: ``context.user_id`` when it is a plausible name."""
    user = ((request.context.user_id if request.context else None) or "").strip()
    if not user or len(user) > 254 or not user.isprintable() or any(c.isspace() for c in user):
        return ANONYMOUS
    return user


class KbResponsesAgent(ResponsesAgent):
    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.index_dir: str | None = None
        self._settings: Any = None
        self._retriever: Any = None
        self._runners: dict[tuple[str, tuple], Any] = {}
        self._lock = threading.Lock()

    def load_context(self, context: Any) -> None:
        self.config = dict(getattr(context, "model_config", None) or {})
        artifacts = getattr(context, "artifacts", None) or {}
        self.index_dir = artifacts.get("index")
        if artifacts.get("minilm"):  # the local model's weights, shipped with the model (agent.deploy.model)
            use_model_folder(MINILM, Path(artifacts["minilm"]))
        self._settings, self._retriever, self._runners = None, None, {}

    # ------------------------------------------------------------ building (once, lazily)

    @property
    def model(self) -> str:
        model = self.config.get("model") or "kb-rag"
        if model not in MODELS:
            raise ValueError(f"unknown model '{model}' in the model config: use one of {', '.join(MODELS)}")
        return model

    def settings(self) -> Any:
        if self._settings is None:
            overrides = dict(self.config.get("settings") or {})
            if self.index_dir:
                overrides["index_dir"] = self.index_dir
            self._settings = load_settings(**overrides)
        return self._settings

    def retriever(self) -> Any:
        with self._lock:
            if self._retriever is None:
                self._retriever = TracedRetriever(build_retriever(self.settings(), command="endpoint"))
            return self._retriever

    def runner(self, caller: str, overrides: dict[str, Any]) -> Any:
        """The answer service (kb-rag) or assistant graph (kb-agent) for this caller and overrides."""
        key = (caller, tuple(sorted(overrides.items())))
        retriever = self.retriever()
        with self._lock:
            found = self._runners.get(key)
            if found is None:
                if len(self._runners) >= MAX_CALLERS:
                    self._runners.clear()
                found = self._runners[key] = self._build(caller, overrides, retriever)
            return found

    def _build(self, caller: str, overrides: dict[str, Any], retriever: Any) -> Any:
        from mlflow.langchain.langchain_tracer import MlflowLangchainTracer

        settings = self.settings()
        llm = build_llm(settings, command="endpoint", usage_extra={"caller": caller, "model": self.model}, **overrides)
        tracer = MlflowLangchainTracer()  # the runs' spans (CHAT_MODEL for each model call) in this trace
        if self.model == "kb-agent":
            from agent.assistant.service import build_assistant  # heavy: langchain agents + langgraph, kb-agent only

            return build_assistant(settings, llm=llm, retriever=retriever).with_config(callbacks=[tracer])

        from agent.rag.rerank import build_reranker

        reranker = build_reranker(settings, command="endpoint", usage_extra={"caller": caller, "model": self.model})
        return AnswerService(settings, llm=llm, retriever=retriever, reranker=reranker), {"callbacks": [tracer]}

    def _overrides(self, request: ResponsesAgentRequest) -> dict[str, Any]:
        settings = self.settings()
        overrides: dict[str, Any] = {}
        if request.max_output_tokens is not None:
            if not 1 <= request.max_output_tokens <= settings.api_max_tokens:
                raise ValueError(f"max_output_tokens must be 1 to {settings.api_max_tokens} (KB_API_MAX_TOKENS)")
            overrides["max_tokens"] = request.max_output_tokens
        elif settings.max_tokens > settings.api_max_tokens:
            overrides["max_tokens"] = settings.api_max_tokens
        if request.temperature is not None:
            if not 0 <= request.temperature <= 2:
                raise ValueError("temperature must be 0 to 2")
            overrides["temperature"] = request.temperature
        return overrides

    # ------------------------------------------------------------ one answer

    def _events(self, request: ResponsesAgentRequest) -> Iterator[tuple[str, Any]]:
        """``("token", str)``... then ``("done", Answer)``, from the configured pipeline."""
        settings = self.settings()
        messages = text_messages(request.input, max_items=settings.api_max_messages)
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user").strip()
        if not question or messages[-1]["role"] != "user":
            raise ValueError("the last input message must be the user's (non-empty) question")
        if len(question) > settings.api_max_question_chars:
            raise ValueError(f"the question is too long: {len(question)} characters (the limit is "
                             f"{settings.api_max_question_chars}, KB_API_MAX_QUESTION_CHARS)")
        custom = request.custom_inputs or {}
        k = custom.get("k") or settings.top_k
        if not isinstance(k, int) or not 1 <= k <= 50:
            raise ValueError("custom_inputs.k must be an integer from 1 to 50")
        runner = self.runner(caller_of(request), self._overrides(request))
        if self.model == "kb-rag":
            service, config = runner
            history = [(m["role"], m["content"]) for m in messages[:-1]
                       if m["role"] in ("user", "assistant") and m["content"].strip()]
            for kind, value in service.stream(question, history=history, k=k, config=config):
                if kind in ("token", "done"):
                    yield kind, value
            return
        yield from _assistant_events(runner, [m for m in messages if m["content"].strip()], settings)

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        item_id = f"msg_{uuid.uuid4().hex}"
        for kind, value in self._events(request):
            if kind == "done":
                return ResponsesAgentResponse(
                    output=[self.create_text_output_item(text=value.text, id=item_id)],
                    custom_outputs=custom_outputs(value),
                )
        raise RuntimeError("the answer ended without a result")  # pragma: no cover

    def predict_stream(self, request: ResponsesAgentRequest) -> Generator[ResponsesAgentStreamEvent, None, None]:
        item_id = f"msg_{uuid.uuid4().hex}"
        for kind, value in self._events(request):
            if kind == "token" and value:
                yield ResponsesAgentStreamEvent(**self.create_text_delta(delta=value, item_id=item_id))
            elif kind == "done":
                yield ResponsesAgentStreamEvent(
                    type="response.output_item.done",
                    item=self.create_text_output_item(text=value.text, id=item_id),
                    custom_outputs=custom_outputs(value),
                )


def custom_outputs(answer: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"sources": answer.sources, "usage": answer.usage}
    if answer.steps is not None:
        data.update(steps=answer.steps, stopped=answer.stopped)
    return data


def _assistant_events(assistant: Any, messages: list[dict[str, str]], settings: Any) -> Iterator[tuple[str, Any]]:
    """``run_assistant`` in a thread (its tokens arrive by callback), its tokens yielded as they come.
    The thread runs in a copy of this context, so its spans nest under the caller's."""
    from agent.assistant.service import run_assistant  # heavy: langchain agents + langgraph, kb-agent only

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    class Stopped(Exception):
        pass

    def on_event(event: dict[str, Any]) -> None:
        if stop.is_set():
            raise Stopped()
        if event.get("type") == "token":
            events.put(("token", event.get("text") or ""))

    def work() -> None:
        try:
            with translate_failures(endpoint=settings.chat_endpoint, base_url=settings.serving_base_url):
                answer = run_assistant(assistant, messages, on_event, endpoint=settings.chat_endpoint,
                                       base_url=settings.serving_base_url)
            if answer.stopped:
                answer.text = answer.message or answer.text
            events.put(("done", answer))
        except BaseException as exc:  # handed to the reader, which raises it
            events.put(("error", exc))

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(work,), daemon=True, name="kb-endpoint-agent")
    thread.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return
    finally:
        stop.set()  # the reader went away (or is done): the thread stops at its next event
