"""Multi-turn retrieval chat as a LangGraph graph: condense -> retrieve -> answer, with memory.

    from agent.conversation import build_chat, run_chat_turn
    from agent.history import open_checkpointer
    chat = build_chat(settings, checkpointer=open_checkpointer(settings.index_dir, "my-session"))
    turn = run_chat_turn(chat, "How many vacation days do I get?", thread_id="chat:my-session")
    turn = run_chat_turn(chat, "and can I carry them over?", thread_id="chat:my-session")
    turn.standalone, turn.answer, turn.sources

- ``condense``: a follow-up is rewritten by the model into a standalone search query from the
  (trimmed, escaped) earlier turns; the first question is used as it is.
- ``retrieve``: the retriever runs on the standalone query.
- ``answer``: the model answers from the numbered, delimited passages with the earlier turns as
  history (trimmed to ``KB_CHAT_HISTORY_TOKENS``, their old ``[n]`` markers removed since those
  numbers referred to other passages); the question and answer are appended to the conversation.
  If the endpoint still answers "too long", the request is retried with less history.

The conversation lives in the graph's checkpointer under ``thread_id`` (SQLite for named sessions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agent.chain import cited_sources
from agent.history import is_context_overflow, shrinking, trim_history
from agent.prompts import CHAT_PROMPT, CONDENSE_PROMPT, REWRITTEN_NOTE, format_passages, format_transcript
from agent.settings import Settings, load_settings

MAX_QUERY_CHARS = 500
_CITATION = re.compile(r"\s?\[\d+(?:\s*[,;]\s*\d+)*\]")


class ChatState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]  # the conversation: user questions, answers
    question: str  # this turn's message as typed
    standalone: str  # ... rewritten to stand alone, used for retrieval
    passages: list[dict[str, Any]]  # this turn's retrieved passages: {"id", "text", "metadata"}
    answer: str


@dataclass
class ChatTurn:
    question: str
    standalone: str
    answer: str
    passages: list[Document] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[dict[str, Any]]:
        return cited_sources(self.answer, self.passages)

    def to_json(self) -> dict[str, Any]:
        from agent.answer import answer_json

        data = answer_json(self.question, self.answer, self.passages, self.usage)
        return {"question": data.pop("question"), "standalone_question": self.standalone, **data}


def passages_to_documents(passages: list[dict[str, Any]] | None) -> list[Document]:
    return [Document(page_content=p["text"], metadata=dict(p.get("metadata") or {}), id=p.get("id")) for p in passages or []]


def _documents_to_passages(documents: list[Document]) -> list[dict[str, Any]]:
    return [{"id": d.id, "text": d.page_content, "metadata": dict(d.metadata)} for d in documents]


def clean_query(text: str, fallback: str) -> str:
    """The model's rewrite as one line of plain query text; the original question when it is empty."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    query = lines[0] if lines else ""
    query = re.sub(r"^(standalone (search )?(query|question)\s*:\s*)", "", query, flags=re.I).strip()
    query = query.strip("\"'“”` ").strip()
    return query[:MAX_QUERY_CHARS] if query else fallback


def _without_citations(messages: list[BaseMessage]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and isinstance(message.content, str):
            message = AIMessage(_CITATION.sub("", message.content))
        out.append(message)
    return out


def build_chat(
    settings: Settings | None = None,
    *,
    llm: Any = None,
    retriever: Any = None,
    checkpointer: Any = None,
    usage_extra: dict[str, str] | None = None,
    k: int | None = None,
) -> Any:
    """The chat graph (``CompiledStateGraph``): ``{"question": str}`` in, per ``thread_id``.

    ``llm`` defaults to ``build_llm(settings, command="chat")``, ``retriever`` to the configured index.
    """
    settings = settings or load_settings()
    if retriever is None:
        from agent.retrieval import build_retriever

        retriever = build_retriever(settings, k=k, command="chat")
    if llm is None:
        from agent.llm import build_llm

        llm = build_llm(settings, command="chat", usage_extra=usage_extra)
    budget = settings.chat_history_tokens
    condenser = (CONDENSE_PROMPT | llm | StrOutputParser()).with_config(run_name="condense_question")
    answerer = (CHAT_PROMPT | llm).with_config(run_name="chat_answer")

    def condense(state: ChatState) -> dict[str, Any]:
        question = state["question"]
        if not trim_history(state.get("messages") or [], budget):
            return {"standalone": question}

        def rewrite(history: list[BaseMessage]) -> str:
            turns = [("user" if isinstance(m, HumanMessage) else "assistant", m.text) for m in _without_citations(history)]
            return condenser.invoke({"transcript": format_transcript(turns), "question": question})

        return {"standalone": clean_query(_shrink_on_overflow(rewrite, state.get("messages") or [], budget), question)}

    def retrieve(state: ChatState) -> dict[str, Any]:
        return {"passages": _documents_to_passages(list(retriever.invoke(state["standalone"])))}

    def answer(state: ChatState) -> dict[str, Any]:
        question, standalone = state["question"], state["standalone"]
        note = REWRITTEN_NOTE.format(standalone=standalone) if standalone.strip() != question.strip() else ""
        passages = format_passages(passages_to_documents(state.get("passages")))

        def ask(history: list[BaseMessage]) -> Any:
            return answerer.invoke(
                {"history": _without_citations(history), "passages": passages, "question": question, "rewritten": note}
            )

        reply = _shrink_on_overflow(ask, state.get("messages") or [], budget)
        text = reply.text if isinstance(reply.text, str) else str(reply.content)
        return {"answer": text, "messages": [HumanMessage(question), AIMessage(text)]}

    graph = StateGraph(ChatState)
    graph.add_node("condense", condense)
    graph.add_node("retrieve", retrieve)
    graph.add_node("answer", answer)
    graph.add_edge(START, "condense")
    graph.add_edge("condense", "retrieve")
    graph.add_edge("retrieve", "answer")
    graph.add_edge("answer", END)
    metadata = {"kb_endpoint": settings.chat_endpoint, "kb_base_url": settings.serving_base_url}
    return graph.compile(checkpointer=checkpointer, name="kb_chat").with_config(metadata=metadata)


def _shrink_on_overflow(call: Callable[[list[BaseMessage]], Any], messages: list[BaseMessage], budget: int) -> Any:
    """``call(history)``, retried with less history while the endpoint says the request is too long."""
    attempts = shrinking(messages, budget)
    for n, history in enumerate(attempts):
        try:
            return call(history)
        except Exception as exc:
            if n == len(attempts) - 1 or not is_context_overflow(exc):
                raise


def history_of(chat: Any, thread_id: str) -> list[BaseMessage]:
    """The stored conversation of a thread (empty without a checkpointer)."""
    if not getattr(chat, "checkpointer", None):
        return []
    return list(chat.get_state({"configurable": {"thread_id": thread_id}}).values.get("messages", []))


def last_turn(chat: Any, thread_id: str) -> ChatTurn | None:
    """The stored last turn of a thread (for ``/sources`` after resuming a session)."""
    if not getattr(chat, "checkpointer", None):
        return None
    values = chat.get_state({"configurable": {"thread_id": thread_id}}).values
    if not values.get("answer"):
        return None
    return ChatTurn(
        question=values.get("question", ""), standalone=values.get("standalone", ""),
        answer=values["answer"], passages=passages_to_documents(values.get("passages")),
    )


def run_chat_turn(
    chat: Any,
    question: str,
    *,
    thread_id: str,
    on_rewrite: Callable[[str], None] | None = None,
    on_token: Callable[[str], None] | None = None,
    endpoint: str | None = None,
    base_url: str | None = None,
) -> ChatTurn:
    """One turn: stream the answer's tokens to ``on_token``; the rewrite goes to ``on_rewrite``.
    Remote failures raise the project's errors; a cut stream keeps the partial answer."""
    from agent.errors import chat_failure
    from agent.tokens import collect_usage

    metadata = (getattr(chat, "config", None) or {}).get("metadata") or {}
    endpoint = endpoint or metadata.get("kb_endpoint") or "?"
    base_url = base_url or metadata.get("kb_base_url")
    turn = ChatTurn(question=question, standalone=question, answer="")
    parts: list[str] = []
    config = {"configurable": {"thread_id": thread_id}}
    try:
        with collect_usage() as usage:  # "unknown" unless every model call reported usage
            for mode, data in chat.stream({"question": question}, config, stream_mode=["messages", "updates"]):
                if mode == "messages":
                    chunk, metadata = data
                    if metadata.get("langgraph_node") == "answer" and isinstance(chunk, AIMessageChunk):
                        if isinstance(chunk.content, str) and chunk.content:
                            parts.append(chunk.content)
                            if on_token:
                                on_token(chunk.content)
                    continue
                for node, values in data.items():
                    values = values or {}
                    if node == "condense":
                        turn.standalone = values.get("standalone") or question
                        if on_rewrite and turn.standalone != question:
                            on_rewrite(turn.standalone)
                    elif node == "retrieve":
                        turn.passages = passages_to_documents(values.get("passages"))
                    elif node == "answer":
                        turn.answer = values.get("answer", "")
            turn.usage = usage.totals()
    except Exception as exc:
        error = chat_failure(exc, partial="".join(parts), endpoint=endpoint, base_url=base_url)
        if error is exc:
            raise
        raise error from None
    if not turn.answer:
        turn.answer = "".join(parts)
    return turn


def reset_thread(chat: Any, thread_id: str) -> None:
    """Forget a conversation (deletes its checkpoints)."""
    checkpointer = getattr(chat, "checkpointer", None)
    if checkpointer is not None:
        checkpointer.delete_thread(thread_id)
