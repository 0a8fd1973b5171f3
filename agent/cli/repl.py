"""The terminal side of ``kb chat`` and ``kb agent``: the REPL loop, streaming and Rich rendering.

Input comes from the terminal (Rich prompt) or, when stdin is not a terminal, line by line from
stdin, so ``printf 'q1\\nq2\\n' | kb chat`` and tests work. Answers stream to stdout; notes, tool
calls and errors go to stderr. In a terminal a failed turn prints ``error: ...`` and the REPL goes
on; with piped input the first failure ends the run with its exit code.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

from rich.console import Console

from agent.errors import KbError, StreamInterruptedError, public_message
from agent.rag.answer import Answer
from agent.terminal import clean, literal
from agent.terminal import markup as escape  # untrusted text: markup escaped, control sequences dropped

HELP = "commands: /sources (what the last answer used), /reset (forget the conversation), /exit"


class Terminal:
    """Where the REPL reads and writes: Rich consoles plus a line reader."""

    def __init__(self, out: Console, err: Console, interactive: bool | None = None) -> None:
        self.out = out
        self.err = err
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self._mid_line = False

    def read(self, prompt: str = "you> ") -> str | None:
        """The next line, or None at end of input (Ctrl-D / end of the piped input)."""
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            try:
                return self.out.input(f"[bold cyan]{prompt}[/]")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\r\n")

    def write(self, text: str) -> None:
        text = clean(text)  # streamed model output: printed literally
        sys.stdout.write(text)
        sys.stdout.flush()
        self._mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        if self._mid_line:
            self.write("\n")

    def note(self, markup: str) -> None:
        self.end_line()
        self.err.print(markup)

    def error(self, exc: BaseException | str) -> None:
        self.end_line()  # public_message: secrets masked, even when an upstream body echoed one
        self.err.print(f"[bold red]error:[/] {escape(public_message(exc), line=True)}")


def print_sources(term: Terminal, sources: list[dict[str, Any]], *, empty: str = "(the answer cites no passage)") -> None:
    """``Sources`` and one line per cited source, as ``kb ask`` prints them."""
    term.end_line()
    if not sources:
        term.out.print(f"\n[dim]{escape(empty, line=True)}[/]")
        return
    term.out.print("\n[bold]Sources[/]")
    for item in sources:
        where = item.get("section") or (f"page {item['page']}" if item.get("page") else "")
        line = f"  [{item['n']}] {item.get('source') or '?'} · {item.get('title') or ''}" + (f" · {where}" if where else "")
        term.out.print(literal(line))


def format_call(name: str, args: Any) -> str:
    """``search_knowledge(query='vacation days', k=3)`` for display."""
    if isinstance(args, dict):
        inner = ", ".join(f"{key}={value!r}" for key, value in args.items())
    else:
        inner = repr(args)
    text = f"{name}({inner})"
    return text if len(text) <= 160 else text[:159] + "…"


def agent_event_printer(term: Terminal) -> Callable[[dict[str, Any]], None]:
    """Show the agent's work as it happens: tokens to stdout, tool calls and results to stderr."""

    def on_event(event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "token":
            term.write(event["text"])
        elif kind == "tool_call":
            label = "malformed call " if event.get("invalid") else ""
            term.note(f"[dim]→ {label}{escape(format_call(event['name'], event['args']), line=True)}[/]")
        elif kind == "tool_result":
            style = "red" if event.get("error") else "dim"
            term.note(f"[{style}]  ← {escape(str(event.get('summary') or ''), line=True)}[/]")

    return on_event


# ---------------------------------------------------------------- kb agent (one task)


def run_agent_task(settings: Any, task: str, *, as_json: bool, term: Terminal) -> int:
    """``kb agent TASK``: the exit code (0, or 1 when the step limit stopped it)."""
    from agent.assistant.service import build_assistant, run_assistant

    assistant = build_assistant(settings)
    on_event = None if as_json else agent_event_printer(term)
    try:
        answer = run_assistant(
            assistant, task, on_event, endpoint=settings.chat_endpoint, base_url=settings.serving_base_url
        )
    except StreamInterruptedError as exc:
        if as_json:
            print(json.dumps({"task": task, **Answer.interrupted(task, exc).to_json()}, indent=2, ensure_ascii=False))
        term.error(f"{exc} (the answer above is incomplete)" if not as_json else exc)
        return exc.exit_code
    if as_json:
        print(json.dumps({"task": task, **answer.to_json()}, indent=2, ensure_ascii=False))
    else:
        term.end_line()
        if not answer.stopped:
            print_sources(term, answer.sources)
    if answer.stopped:
        term.error(answer.message or answer.stopped)
        return 1
    return 0


# ---------------------------------------------------------------- kb chat (REPL)


def chat_event_printer(term: Terminal) -> Callable[[tuple[str, Any]], None]:
    """Show a chat turn as it happens: the rewritten search query to stderr, tokens to stdout."""

    def on_event(event: tuple[str, Any]) -> None:
        kind, value = event
        if kind == "rewrite":
            term.note(f"[dim]↳ searching for: {escape(value, line=True)}[/]")
        elif kind == "token":
            term.write(value)

    return on_event


class ChatSession:
    """The plain retrieval chat (``kb chat``): the answer service and one stored conversation."""

    mode = "chat"

    def __init__(self, settings: Any, checkpointer: Any, thread_id: str, retriever: Any) -> None:
        from agent.rag.conversation import build_chat

        self.settings = settings
        self.thread_id = thread_id
        self.chat = build_chat(settings, checkpointer=checkpointer, retriever=retriever)
        self.last: Answer | None = None

    def earlier_turns(self) -> int:
        from langchain_core.messages import HumanMessage

        self.last = self.chat.memory.last(self.thread_id)
        return sum(isinstance(m, HumanMessage) for m in self.chat.memory.messages(self.thread_id))

    def ask(self, question: str, term: Terminal) -> None:
        from agent.rag.conversation import run_chat_turn

        answer = run_chat_turn(self.chat, question, thread_id=self.thread_id, on_event=chat_event_printer(term))
        self.last = answer
        if answer.refused:
            term.end_line()
            return
        print_sources(term, answer.sources)

    def show_sources(self, term: Terminal) -> None:
        if self.last is None:
            term.note("[dim]no answer yet[/]")
            return
        print_sources(term, self.last.sources)
        if self.last.standalone and self.last.standalone != self.last.question:
            term.out.print(f"[dim]searched for: {escape(self.last.standalone, line=True)}[/]")
        term.out.print(f"[bold]Retrieved[/] ({len(self.last.passages)} passages)")
        for n, document in enumerate(self.last.passages, 1):
            meta = document.metadata
            score = meta.get("score")
            score_text = f" · score {score:.3f}" if isinstance(score, (int, float)) else ""
            term.out.print(literal(f"  [{n}] {meta.get('source')} · {meta.get('title') or ''}{score_text}"))

    def reset(self) -> None:
        self.chat.memory.reset(self.thread_id)
        self.last = None


class AgentSession:
    """``kb chat --agent``: the tool-using assistant with memory."""

    mode = "agent"

    def __init__(self, settings: Any, checkpointer: Any, thread_id: str, retriever: Any) -> None:
        from agent.assistant.service import build_assistant

        self.settings = settings
        self.thread_id = thread_id
        self.graph = build_assistant(settings, checkpointer=checkpointer, retriever=retriever)
        self.last: Answer | None = None

    def earlier_turns(self) -> int:
        from langchain_core.messages import AIMessage, HumanMessage

        from agent.assistant.tools import SourceRegistry, public_ref

        messages = self.graph.get_state({"configurable": {"thread_id": self.thread_id}}).values.get("messages", [])
        answers = [m for m in messages if isinstance(m, AIMessage) and not m.tool_calls and m.text]
        if answers:  # a resumed session: /sources shows the stored last answer's
            registry = SourceRegistry.from_messages(messages)
            self.last = Answer(question="", text=answers[-1].text, sources=registry.cited(answers[-1].text),
                               consulted=[public_ref(r) for r in registry.all()])
        return sum(isinstance(m, HumanMessage) for m in messages)

    def ask(self, question: str, term: Terminal) -> None:
        from agent.assistant.service import run_assistant

        answer = run_assistant(
            self.graph, question, agent_event_printer(term), thread_id=self.thread_id,
            endpoint=self.settings.chat_endpoint, base_url=self.settings.serving_base_url,
        )
        self.last = answer
        if answer.stopped:
            term.error(answer.message or answer.stopped)
            return
        print_sources(term, answer.sources)

    def show_sources(self, term: Terminal) -> None:
        if self.last is None:
            term.note("[dim]no answer yet in this run[/]")
            return
        print_sources(term, self.last.sources)
        consulted = self.last.consulted or []
        term.out.print(f"[bold]Consulted[/] ({len(consulted)} passages and documents in this conversation)")
        for ref in consulted:
            term.out.print(literal(f"  [{ref['n']}] {ref.get('source')} · {ref.get('title') or ''}"))

    def reset(self) -> None:
        checkpointer = getattr(self.graph, "checkpointer", None)
        if checkpointer is not None:
            checkpointer.delete_thread(self.thread_id)
        self.last = None


def chat_repl(settings: Any, *, session: str | None, agent: bool, k: int | None, term: Terminal) -> int:
    """``kb chat``: the REPL; returns the exit code."""
    from agent.rag.history import close_checkpointer, open_checkpointer
    from agent.databricks.llm import build_llm
    from agent.rag.retrieval import build_retriever

    mode = "agent" if agent else "chat"
    build_llm(settings, command=mode)  # fail now, before any question, when no model is configured
    retriever = build_retriever(settings, k=None if agent else k, command=mode)  # ... or there is no index
    checkpointer = open_checkpointer(settings.index_dir, session)
    thread_id = f"{mode}:{session}" if session else f"{mode}:{uuid.uuid4().hex}"
    try:
        chat = (AgentSession if agent else ChatSession)(settings, checkpointer, thread_id, retriever)
        earlier = chat.earlier_turns()
        if session:
            resumed = f"resumed, {earlier} earlier turn{'s' if earlier != 1 else ''}" if earlier else "new"
            term.note(f"[dim]session '{escape(session, line=True)}' ({resumed}), kept in "
                      f"{escape(settings.index_dir, line=True)}[/]")
        if term.interactive:
            kind = "agent with tools" if agent else "chat"
            term.note(f"[dim]kb {kind} · {HELP}[/]")
        while True:
            try:
                line = term.read()
            except KeyboardInterrupt:
                term.end_line()
                return 0
            if line is None:
                term.end_line()
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command = text.split()[0].lower()
                if command in ("/exit", "/quit"):
                    return 0
                if command == "/reset":
                    chat.reset()
                    term.note("[dim]conversation forgotten[/]")
                elif command == "/sources":
                    chat.show_sources(term)
                elif command == "/help":
                    term.note(HELP)
                else:
                    term.note(f"[yellow]unknown command {escape(command, line=True)}[/]; {HELP}")
                continue
            try:
                chat.ask(text, term)
                if term.interactive:
                    term.out.print()
            except StreamInterruptedError as exc:
                term.error(f"{exc} (the answer above is incomplete)")
                if not term.interactive:
                    return exc.exit_code
            except KbError as exc:
                term.error(exc)
                if not term.interactive:
                    return exc.exit_code
            except KeyboardInterrupt:
                term.note("[dim](interrupted)[/]")
                if not term.interactive:
                    return 130
    finally:
        close_checkpointer(checkpointer)
