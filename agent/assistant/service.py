"""The tool-using assistant: a LangChain agent (``langchain.agents.create_agent``) over the
Databricks-served chat model, with the knowledge-base tools of ``agent.assistant.tools``.

    from agent.assistant.service import build_assistant, run_assistant
    assistant = build_assistant()                  # settings from the environment / .env
    answer = run_assistant(assistant, "Compare the PTO and sick-leave rules")
    answer.text, answer.sources, answer.steps      # text with [n] citations, [{"n", "source", "title"}], tool calls

``build_assistant`` returns the compiled LangGraph graph (a Runnable: ``invoke``/``stream`` with
``{"messages": [...]}``), its step limit set as ``recursion_limit`` from ``KB_AGENT_MAX_STEPS``.
``run_assistant`` runs it once, reports tool calls, results and answer tokens as they happen, and
returns an ``Answer`` (``agent.rag.answer``, the shape every surface gets) with the cited sources,
the steps, usage, and whether the step limit stopped it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, hook_config
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)

from agent.assistant.tools import AssistantContext, KnowledgeBase, SourceRegistry, build_tools, public_ref
from agent.rag.answer import Answer
from agent.rag.failures import translate_failures
from agent.rag.history import fit_history, is_context_overflow
from agent.rag.prompts import AGENT_SYSTEM, CALLER_INSTRUCTIONS, STEP_LIMIT_MESSAGE
from agent.rag.retrieval import build_retriever
from agent.settings import Settings, load_settings
from agent.usage.tokens import collect_usage

# Graph supersteps per agent step: the model node, this module's after-model check, the tools node.
SUPERSTEPS_PER_STEP = 3
STOPPED_NOTE = "(I stopped at the step limit before reaching an answer.)"
FAILED_NOTE = "(No answer: this request failed.)"

Event = dict[str, Any]


def recursion_limit_for(max_steps: int) -> int:
    """LangGraph ``recursion_limit`` allowing ``max_steps`` model calls and the tools each one requests."""
    return SUPERSTEPS_PER_STEP * max_steps


class MalformedToolCalls(AgentMiddleware):
    """Answer tool calls whose arguments are not valid JSON with an error the model can act on.

    ChatOpenAI puts such calls in ``AIMessage.invalid_tool_calls``; without this the loop would end
    on them. Each gets an error ``ToolMessage`` with its id and the model is called again.
    (Unknown tool names and arguments that miss the schema are answered by the tool node itself.)
    """

    @hook_config(can_jump_to=["model"])
    def after_model(self, state: dict[str, Any], runtime: Any) -> dict[str, Any] | None:
        last = state["messages"][-1] if state.get("messages") else None
        if not isinstance(last, AIMessage) or not last.invalid_tool_calls or last.tool_calls:
            return None
        errors = [
            ToolMessage(
                content=(
                    f"error: the arguments of this {call.get('name') or 'tool'} call are not valid JSON"
                    f" ({call.get('error') or 'malformed'}); call the tool again with a JSON object that matches its parameters"
                ),
                tool_call_id=call["id"],
                name=call.get("name") or "unknown",
                status="error",
            )
            for call in last.invalid_tool_calls
            if call.get("id")
        ]
        return {"messages": errors, "jump_to": "model"} if errors else None


class PrepareRequest(AgentMiddleware):
    """What each model request carries: one system message first (a caller's own system messages,
    say from an OpenAI-style API request, are appended to the assistant's), the current turn whole
    and as much earlier conversation as ``max_tokens`` allows; if the endpoint still says the request
    is too long, it is sent again with the current turn only."""

    def __init__(self, max_tokens: int) -> None:
        super().__init__()
        self.max_tokens = max_tokens

    def _prepare(self, request: Any, max_tokens: int) -> Any:
        extra = [m.text for m in request.messages if isinstance(m, SystemMessage) and m.text.strip()]
        messages = [m for m in request.messages if not isinstance(m, SystemMessage)]
        overrides: dict[str, Any] = {"messages": fit_history(messages, max_tokens)}
        if extra:
            base = request.system_message.text if request.system_message else ""
            overrides["system_message"] = SystemMessage(base + CALLER_INSTRUCTIONS + "\n\n".join(extra))
        return request.override(**overrides)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(self._prepare(request, self.max_tokens))
        except Exception as exc:  # still too long for the model: only the current turn
            if not is_context_overflow(exc):
                raise
            return handler(self._prepare(request, 0))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return await handler(self._prepare(request, self.max_tokens))
        except Exception as exc:
            if not is_context_overflow(exc):
                raise
            return await handler(self._prepare(request, 0))


def build_assistant(
    settings: Settings | None = None,
    *,
    llm: Any = None,
    retriever: Any = None,
    usage_extra: dict[str, str] | None = None,
    checkpointer: Any = None,
    max_steps: int | None = None,
    groups: frozenset[str] | None = None,
) -> Any:
    """The assistant graph (``CompiledStateGraph``): ``{"messages": [...]}`` in, ``{"messages": [...]}`` out.

    - ``llm``: a tool-calling chat model; default ``build_llm(settings, command="agent", usage_extra=...)``
      (so every request carries ``usage_context`` with ``"command": "agent"`` plus ``usage_extra``;
      ``usage_extra`` only applies to this default model).
    - ``retriever``: anything with ``invoke(query, k=...) -> [Document]``; default the configured index.
    - ``checkpointer``: a LangGraph checkpointer for conversations kept by ``thread_id``.
    - ``groups``: what the tools may search, list and read (``ingest.access``; default ``--as-groups``,
      unset: everything).
    - ``max_steps``: model calls per run (default ``KB_AGENT_MAX_STEPS``); beyond it the graph raises
      ``GraphRecursionError`` (``run_assistant`` turns that into a clean stop).
    """
    settings = settings or load_settings()
    if retriever is None:
        retriever = build_retriever(settings, command="agent")
    if llm is None:
        from agent.databricks.llm import build_llm  # heavy: langchain_openai + openai, only when no llm is passed

        llm = build_llm(settings, command="agent", usage_extra=usage_extra)
    if groups is None:
        groups = getattr(settings, "as_groups", None)
    knowledge = KnowledgeBase(retriever=retriever, index_dir=settings.index_dir, default_k=settings.top_k,
                              groups=groups)
    steps = max_steps or settings.agent_max_steps
    graph = create_agent(
        llm,
        build_tools(knowledge),
        system_prompt=AGENT_SYSTEM,
        middleware=[MalformedToolCalls(), PrepareRequest(settings.chat_history_tokens)],
        context_schema=AssistantContext,
        checkpointer=checkpointer,
        name="kb_assistant",
    )
    metadata = {"kb_max_steps": steps, "kb_endpoint": settings.chat_endpoint, "kb_base_url": settings.serving_base_url}
    return graph.with_config(recursion_limit=recursion_limit_for(steps), metadata=metadata)


def max_steps_of(assistant: Any) -> int:
    config = getattr(assistant, "config", None) or {}
    steps = (config.get("metadata") or {}).get("kb_max_steps")
    return int(steps) if steps else max(1, int(config.get("recursion_limit", 24)) // SUPERSTEPS_PER_STEP)


def _as_messages(messages: Sequence[dict[str, Any] | BaseMessage] | str) -> list[BaseMessage]:
    if isinstance(messages, str):
        return [HumanMessage(messages)]
    converted = convert_to_messages(list(messages))
    if not converted:
        raise ValueError("run_assistant needs a task or at least one message")
    return converted


def run_assistant(
    assistant: Any,
    messages: Sequence[dict[str, Any] | BaseMessage] | str,
    on_event: Callable[[Event], None] | None = None,
    *,
    thread_id: str | None = None,
    endpoint: str | None = None,
    base_url: str | None = None,
) -> Answer:
    """Run the assistant once and return its ``Answer`` (``agent.rag.answer``): ``text``, ``sources``
    (the passages/documents the answer cites), ``steps``, ``usage``, ``consulted`` (all that the
    tools returned), and ``stopped``/``message`` when the step limit ended it.

    - ``messages``: a task string, or OpenAI-style ``[{"role": "user"|"assistant"|"system", "content": ...}]``
      (or LangChain messages). With a checkpointer, pass only the new message(s) and a ``thread_id``
      (the conversation); without one a fresh thread is used.
    - ``on_event(event)`` is called as things happen: ``{"type": "token", "text"}`` (model text, streamed),
      ``{"type": "tool_call", "id", "name", "args", "of"}`` (``of``: the calls made together in that step;
      parallel results arrive as they finish), ``{"type": "tool_result", "id", "name", "summary",
      "error"}``, and ``{"type": "stopped", "message"}`` when the step limit ends the run.
    - ``steps``: one entry per tool call: ``{"id", "tool", "args", "summary", "error"}``.
    - ``stopped`` is ``"step_limit"`` (with ``text == ""`` and a one-line ``message``) or ``None``.
    - Remote failures raise the project's ``RemoteError`` family (``StreamInterruptedError`` keeps the
      partial text), through the same ``translate_failures`` as the answer service.
    """
    from langgraph.errors import GraphRecursionError

    started = time.perf_counter()
    new_messages = _as_messages(messages)
    metadata = (getattr(assistant, "config", None) or {}).get("metadata") or {}
    endpoint = endpoint or metadata.get("kb_endpoint") or "?"
    base_url = base_url or metadata.get("kb_base_url")
    if getattr(assistant, "checkpointer", None) and not thread_id:
        thread_id = f"run:{uuid.uuid4().hex}"  # a checkpointer needs a thread; this one is used once
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}} if thread_id else {}
    earlier: list[BaseMessage] = []
    if thread_id and getattr(assistant, "checkpointer", None):
        earlier = list(assistant.get_state(config).values.get("messages", []))
        _close_dangling_calls(assistant, config, earlier)
    registry = SourceRegistry.from_messages(earlier + new_messages)
    emit = on_event or (lambda event: None)
    run = _Run(emit)
    stopped = None
    try:
        with translate_failures(partial=lambda: run.text, endpoint=endpoint, base_url=base_url):
            with collect_usage() as usage:  # "unknown" unless every model call reported usage
                for mode, data in assistant.stream(
                    {"messages": new_messages},
                    config or None,
                    context=AssistantContext(registry=registry),
                    stream_mode=["messages", "updates"],
                ):
                    if mode == "messages":
                        run.on_chunk(*data)
                    else:
                        run.on_update(data)
    except GraphRecursionError:
        stopped = "step_limit"

    message = None
    text = run.answer
    if stopped:
        message = STEP_LIMIT_MESSAGE.format(steps=max_steps_of(assistant))
        text = ""
        emit({"type": "stopped", "reason": stopped, "message": message})
        if thread_id and getattr(assistant, "checkpointer", None):
            _close_dangling_calls(assistant, config, list(assistant.get_state(config).values.get("messages", [])), note=True)
    question = next((m.text for m in reversed(new_messages) if isinstance(m, HumanMessage)), "")
    return Answer(
        question=question,
        text=text,
        sources=registry.cited(text),
        steps=run.steps,
        usage=usage.totals(),
        stopped=stopped,
        message=message,
        consulted=[public_ref(ref) for ref in registry.all()],
        timing={"total": time.perf_counter() - started},
    )


class _Run:
    """Turns the graph's stream into events, steps and the final answer."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.steps: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self.answer = ""
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def on_chunk(self, chunk: Any, metadata: dict[str, Any]) -> None:
        if metadata.get("langgraph_node") != "model" or not isinstance(chunk, AIMessageChunk):
            return
        if isinstance(chunk.content, str) and chunk.content:
            self._parts.append(chunk.content)
            self.emit({"type": "token", "text": chunk.content})

    def on_update(self, update: dict[str, Any]) -> None:
        for node, values in update.items():
            for message in (values or {}).get("messages", []) if isinstance(values, dict) else []:
                if isinstance(message, AIMessage) and node == "model":
                    self._on_ai(message)
                elif isinstance(message, ToolMessage):
                    self._on_tool(message)

    def _on_ai(self, message: AIMessage) -> None:
        self._parts = []
        count = len(message.tool_calls) + len(message.invalid_tool_calls)  # "of": parallel calls in this step
        for call in message.tool_calls:
            self._step(call.get("id") or "", call["name"], call.get("args") or {}, of=count)
        for call in message.invalid_tool_calls:
            self._step(call.get("id") or "", call.get("name") or "?", call.get("args") or "", invalid=True, of=count)
        if not message.tool_calls and not message.invalid_tool_calls:
            self.answer = message.text

    def _step(self, call_id: str, name: str, args: Any, *, invalid: bool = False, of: int = 1) -> None:
        step = {"id": call_id, "tool": name, "args": args, "summary": None, "error": None}
        self.steps.append(step)
        self._by_id[call_id] = step
        event = {"type": "tool_call", "id": call_id, "name": name, "args": args, "of": of}
        if invalid:
            event["invalid"] = True
        self.emit(event)

    def _on_tool(self, message: ToolMessage) -> None:
        artifact = message.artifact if isinstance(message.artifact, dict) else {}
        is_error = message.status == "error"
        text = message.content if isinstance(message.content, str) else json.dumps(message.content)
        summary = artifact.get("summary") or _first_line(text)
        step = self._by_id.get(message.tool_call_id)
        if step is not None:
            step["summary"], step["error"] = summary, is_error
        self.emit({
            "type": "tool_result", "id": message.tool_call_id, "name": message.name or (step or {}).get("tool"),
            "summary": summary, "error": is_error,
        })


def _first_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _close_dangling_calls(assistant: Any, config: dict[str, Any], messages: list[BaseMessage], *, note: bool = False) -> None:
    """Keep a stored conversation valid for the next request: answer tool calls a stopped run left
    unanswered (the API rejects a tool call without its result), after a stop say so, and after a
    failed request add an assistant turn so user and assistant keep alternating."""
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    fixes: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage):
            for call in [*message.tool_calls, *message.invalid_tool_calls]:
                if call.get("id") and call["id"] not in answered:
                    fixes.append(ToolMessage(
                        content="error: not run (the step limit was reached)", tool_call_id=call["id"],
                        name=call.get("name") or "unknown", status="error",
                    ))
                    answered.add(call["id"])
    ends_with_answer = bool(messages) and isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls
    if note and not ends_with_answer:
        fixes.append(AIMessage(STOPPED_NOTE))
    elif messages and isinstance(messages[-1], HumanMessage):
        fixes.append(AIMessage(FAILED_NOTE))  # the last request failed: keep user/assistant alternating
    if fixes:
        assistant.update_state(config, {"messages": fixes}, as_node="model")
