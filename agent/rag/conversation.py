"""``kb chat`` without ``--agent``: the answer service (``agent.rag.service``) plus a memory.

    from agent.rag.conversation import build_chat, run_chat_turn
    from agent.rag.history import open_checkpointer
    chat = build_chat(settings, checkpointer=open_checkpointer(settings.index_dir, "my-session"))
    answer = run_chat_turn(chat, "How many vacation days do I get?", thread_id="chat:my-session")
    answer = run_chat_turn(chat, "and can I carry them over?", thread_id="chat:my-session")
    answer.standalone, answer.text, answer.sources

A turn is one ``AnswerService.stream`` call with the thread's stored conversation as history, so
chat condenses, trims, declines and counts exactly as ``kb ask`` and the API do; the question and
its answer (a refusal included, so user and assistant keep alternating) are then stored. A failed
turn stores nothing.

The conversation lives in a LangGraph checkpointer under ``thread_id`` (SQLite for named
sessions): ``ChatMemory`` keeps it in the state keys earlier versions wrote (``messages``,
``question``, ``standalone``, ``passages``, ``answer``), so stored sessions resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agent.rag.chain import cited_sources
from agent.rag.answer import Answer
from agent.rag.service import AnswerService, Event
from agent.settings import Settings, load_settings


class ChatState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]  # the conversation: user questions, answers
    question: str  # the last turn's message as typed
    standalone: str  # ... rewritten to stand alone, used for retrieval
    passages: list[dict[str, Any]]  # the last turn's retrieved passages: {"id", "text", "metadata"}
    answer: str


def passages_to_documents(passages: list[dict[str, Any]] | None) -> list[Document]:
    return [Document(page_content=p["text"], metadata=dict(p.get("metadata") or {}), id=p.get("id")) for p in passages or []]


def _documents_to_passages(documents: list[Document]) -> list[dict[str, Any]]:
    return [{"id": d.id, "text": d.page_content, "metadata": dict(d.metadata)} for d in documents]


class ChatMemory:
    """Conversations kept by thread in a LangGraph checkpointer (a graph of one no-op node is the
    checkpointer's reader and writer)."""

    def __init__(self, checkpointer: Any = None) -> None:
        graph = StateGraph(ChatState)
        graph.add_node("turn", lambda state: {})
        graph.add_edge(START, "turn")
        graph.add_edge("turn", END)
        self.checkpointer = checkpointer
        self.graph = graph.compile(checkpointer=checkpointer, name="kb_chat")

    @staticmethod
    def _config(thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}}

    def _values(self, thread_id: str) -> dict[str, Any]:
        if self.checkpointer is None:
            return {}
        return dict(self.graph.get_state(self._config(thread_id)).values)

    def messages(self, thread_id: str) -> list[BaseMessage]:
        """The stored conversation (empty without a checkpointer)."""
        return list(self._values(thread_id).get("messages", []))

    def last(self, thread_id: str) -> Answer | None:
        """The stored last turn (for ``/sources`` after resuming a session)."""
        values = self._values(thread_id)
        if not values.get("answer"):
            return None
        passages = passages_to_documents(values.get("passages"))
        question = values.get("question", "")
        standalone = values.get("standalone") or None
        return Answer(question=question, text=values["answer"], standalone=standalone, passages=passages,
                      sources=cited_sources(values["answer"], passages))

    def record(self, thread_id: str, answer: Answer) -> None:
        if self.checkpointer is None:
            return
        self.graph.update_state(self._config(thread_id), {
            "messages": [HumanMessage(answer.question), AIMessage(answer.text)],
            "question": answer.question,
            "standalone": answer.standalone or answer.question,
            "passages": _documents_to_passages(answer.passages),
            "answer": answer.text,
        }, as_node="turn")

    def reset(self, thread_id: str) -> None:
        """Forget a conversation (deletes its checkpoints)."""
        if self.checkpointer is not None:
            self.checkpointer.delete_thread(thread_id)


@dataclass
class Chat:
    service: AnswerService
    memory: ChatMemory


def build_chat(
    settings: Settings | None = None,
    *,
    llm: Any = None,
    retriever: Any = None,
    checkpointer: Any = None,
    usage_extra: dict[str, str] | None = None,
    k: int | None = None,
) -> Chat:
    """The chat: ``llm`` defaults to ``build_llm(settings, command="chat")``, ``retriever`` to the
    configured index; the conversation is kept in ``checkpointer`` (none: not kept)."""
    settings = settings or load_settings()
    service = AnswerService.from_settings(settings, command="chat", llm=llm, retriever=retriever, k=k,
                                          usage_extra=usage_extra)
    return Chat(service=service, memory=ChatMemory(checkpointer))


def run_chat_turn(
    chat: Chat, question: str, *, thread_id: str, on_event: Callable[[Event], None] | None = None
) -> Answer:
    """One turn: the service's events go to ``on_event`` as they happen; the turn is stored once
    it has ended. Failures raise the project's errors (a cut stream keeps its partial text)."""
    history = chat.memory.messages(thread_id)
    answer: Answer | None = None
    for kind, value in chat.service.stream(question, history=history):
        if on_event:
            on_event((kind, value))
        if kind == "done":
            answer = value
    if answer is None:  # pragma: no cover
        raise RuntimeError("the answer stream ended without a result")
    chat.memory.record(thread_id, answer)
    return answer
