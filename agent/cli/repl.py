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

from agent.cli.status import Status
from agent.databricks.llm import build_llm
from agent.errors import KbError, StreamInterruptedError, public_message
from agent.rag.answer import Answer
from agent.rag.chain import cited_numbers
from agent.rag.history import close_checkpointer, open_checkpointer
from agent.rag.retrieval import build_retriever
from agent.terminal import clean, literal
from agent.terminal import markup as escape  # untrusted text: markup escaped, control sequences dropped

HELP = "commands: /sources (what the last answer used), /reset (forget the conversation), /exit"


class Terminal:
    """Where the REPL reads and writes: Rich consoles plus a line reader."""

    def __init__(self, out: Console, err: Console, interactive: bool | None = None, status: Status | None = None) -> None:
        self.out = out
        self.err = err
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.status = status or Status(err)  # the spinner until the first token (stderr terminals only)
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
        self.status.stop()  # the spinner never shares a line with the answer
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
        self.status.stop()
        self.end_line()  # public_message: secrets masked, even when an upstream body echoed one
        self.err.print(f"[bold red]error:[/] {escape(public_message(exc), line=True)}")


def print_sources(term: Terminal, sources: list[dict[str, Any]], *, text: str | None = None) -> None:
    """``Sources`` and one line per cited source, as ``kb ask`` prints them; ``text`` (the answer)
    names citations that match no retrieved passage instead of claiming it cites none."""
    term.status.stop()
    term.end_line()
    for line in sources_lines(sources, text):
        term.out.print(line)


def sources_lines(sources: list[dict[str, Any]], text: str | None = None) -> list[Any]:
    """The lines after an answer (Rich renderables): ``Sources`` with one line per cited source, or a
    dim note: the answer cites nothing, or cites numbers no passage or document was retrieved under."""

    known = {item.get("n") for item in sources}
    unknown = [n for n in cited_numbers(text or "") if n not in known][:20]
    marks = ", ".join(f"[{n}]" for n in unknown)
    lines: list[Any] = []
    if not sources:
        note = (f"(the answer cites {marks}, but no passage or document was retrieved under "
                f"{'that number' if len(unknown) == 1 else 'those numbers'})") if unknown else "(the answer cites no passage)"
        return ["", literal(note, style="dim")]
    lines += ["", "[bold]Sources[/]"]
    for item in sources:
        where = item.get("section") or (f"page {item['page']}" if item.get("page") else "")
        line = f"  [{item['n']}] {item.get('source') or '?'} · {item.get('title') or ''}" + (f" · {where}" if where else "")
        lines.append(literal(line))
    if unknown:
        lines.append(literal(f"  (also cites {marks}: no passage or document was retrieved under "
                             f"{'that number' if len(unknown) == 1 else 'those numbers'})", style="dim"))
    return lines


def format_call(name: str, args: Any) -> str:
    """``search_knowledge(query='vacation days', k=3)`` for display."""
    if isinstance(args, dict):
        inner = ", ".join(f"{key}={value!r}" for key, value in args.items())
    else:
        inner = repr(args)
    text = f"{name}({inner})"
    return text if len(text) <= 160 else text[:159] + "…"


class AgentPrinter:
    """Show the agent's work as it happens: tokens to stdout, tool calls and results to stderr.

    Parallel tool calls (one model step asking for several) finish in any order: each result is
    labelled with its call (the tool's name, and ``#i`` when the step made several calls) and held
    back until the results of the calls before it are printed, so they read in call order. The
    status line says what is running until the first token.
    """

    def __init__(self, term: Terminal) -> None:
        self.term = term
        self._order: list[str] = []  # call ids of the current step, in call order
        self._labels: dict[str, str] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._running: dict[str, str] = {}  # call id -> tool name, still running
        self._in_step = False

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "token":
            self.flush()
            self.term.write(event["text"])
        elif kind == "tool_call":
            self._call(event)
        elif kind == "tool_result":
            self._result(event)
        else:  # "stopped" and anything newer: what finished is shown first
            self.flush()

    def _call(self, event: dict[str, Any]) -> None:
        if not self._in_step:  # the first call of a new step: whatever the last one left is shown first
            self.flush()
            self._order, self._labels, self._in_step = [], {}, True
        call_id = str(event.get("id") or f"#{len(self._order)}")
        count = int(event.get("of") or 1)
        position = f"#{len(self._order) + 1} " if count > 1 else ""
        self._order.append(call_id)
        self._labels[call_id] = f"{position}{event.get('name') or '?'}"
        self._running[call_id] = str(event.get("name") or "?")
        label = "malformed call " if event.get("invalid") else ""
        self.term.note(f"[dim]→ {escape(position)}{label}{escape(format_call(event['name'], event['args']), line=True)}[/]")
        self._show_running()

    def _result(self, event: dict[str, Any]) -> None:
        self._in_step = False
        call_id = str(event.get("id") or "")
        if call_id not in self._labels:  # a result without its call (should not happen): print it as it is
            self._print(event, str(event.get("name") or "?"))
            return
        self._results[call_id] = event
        self._running.pop(call_id, None)
        while self._order and self._order[0] in self._results:
            head = self._order.pop(0)
            self._print(self._results.pop(head), self._labels[head])
        self._show_running()

    def _show_running(self) -> None:
        names = list(dict.fromkeys(self._running.values()))
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.term.status.show(f"running {clean(shown, line=True)}…")
        else:
            self.term.status.show("thinking…")

    def _print(self, event: dict[str, Any], label: str) -> None:
        style = "red" if event.get("error") else "dim"
        summary = str(event.get("summary") or "")
        self.term.note(f"[{style}]  ← {escape(label, line=True)}: {escape(summary, line=True)}[/]")

    def flush(self) -> None:
        """Print the results held back (in call order), skipping calls that never got one."""
        for call_id in self._order:
            if call_id in self._results:
                self._print(self._results.pop(call_id), self._labels[call_id])
        self._order, self._in_step = [], False
        self._running.clear()


def agent_event_printer(term: Terminal) -> AgentPrinter:
    """``on_event`` for ``run_assistant``: see ``AgentPrinter``."""
    return AgentPrinter(term)


# ---------------------------------------------------------------- kb agent (one task)


def run_agent_task(settings: Any, task: str, *, as_json: bool, term: Terminal) -> int:
    """``kb agent TASK``: the exit code (0, or 1 when the step limit stopped it)."""
    from agent.assistant.service import build_assistant, run_assistant  # heavy: langchain agents + langgraph, kb agent / kb chat --agent only

    assistant = build_assistant(settings)
    printer = None if as_json else agent_event_printer(term)
    if printer is not None:
        term.status.show("thinking…")
    try:
        answer = run_assistant(
            assistant, task, printer, endpoint=settings.chat_endpoint, base_url=settings.serving_base_url
        )
    except StreamInterruptedError as exc:
        if printer is not None:
            printer.flush()
        if as_json:
            print(json.dumps({"task": task, **Answer.interrupted(task, exc).to_json()}, indent=2, ensure_ascii=False))
        term.error(f"{exc} (the answer above is incomplete)" if not as_json else exc)
        return exc.exit_code
    if as_json:
        print(json.dumps({"task": task, **answer.to_json()}, indent=2, ensure_ascii=False))
    else:
        printer.flush()
        term.end_line()
        if not answer.stopped:
            print_sources(term, answer.sources, text=answer.text)
    term.status.stop()
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
        elif kind == "passages":
            term.status.show("writing…")
        elif kind == "token":
            term.write(value)

    return on_event


class ChatSession:
    """The plain retrieval chat (``kb chat``): the answer service and one stored conversation."""

    mode = "chat"

    def __init__(self, settings: Any, checkpointer: Any, thread_id: str, retriever: Any) -> None:
        from agent.rag.conversation import build_chat  # heavy: langgraph, kb chat only (kb ask imports this module)

        self.settings = settings
        self.thread_id = thread_id
        self.chat = build_chat(settings, checkpointer=checkpointer, retriever=retriever)
        self.last: Answer | None = None

    def earlier_turns(self) -> int:
        from langchain_core.messages import HumanMessage

        self.last = self.chat.memory.last(self.thread_id)
        return sum(isinstance(m, HumanMessage) for m in self.chat.memory.messages(self.thread_id))

    def ask(self, question: str, term: Terminal) -> None:
        from agent.rag.conversation import run_chat_turn  # heavy: langgraph, kb chat only (kb ask imports this module)

        term.status.show("searching…")
        try:
            answer = run_chat_turn(self.chat, question, thread_id=self.thread_id, on_event=chat_event_printer(term))
        finally:
            term.status.stop()
        self.last = answer
        if answer.refused:
            term.end_line()
            return
        print_sources(term, answer.sources, text=answer.text)

    def show_sources(self, term: Terminal) -> None:
        if self.last is None:
            term.note("[dim]no answer yet[/]")
            return
        print_sources(term, self.last.sources, text=self.last.text)
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
        from agent.assistant.service import build_assistant  # heavy: langchain agents + langgraph, kb agent / kb chat --agent only

        self.settings = settings
        self.thread_id = thread_id
        self.graph = build_assistant(settings, checkpointer=checkpointer, retriever=retriever)
        self.last: Answer | None = None

    def earlier_turns(self) -> int:
        from langchain_core.messages import AIMessage, HumanMessage

        from agent.assistant.tools import SourceRegistry, public_ref  # heavy: langgraph, kb chat --agent only

        messages = self.graph.get_state({"configurable": {"thread_id": self.thread_id}}).values.get("messages", [])
        answers = [m for m in messages if isinstance(m, AIMessage) and not m.tool_calls and m.text]
        if answers:  # a resumed session: /sources shows the stored last answer's
            registry = SourceRegistry.from_messages(messages)
            self.last = Answer(question="", text=answers[-1].text, sources=registry.cited(answers[-1].text),
                               consulted=[public_ref(r) for r in registry.all()])
        return sum(isinstance(m, HumanMessage) for m in messages)

    def ask(self, question: str, term: Terminal) -> None:
        from agent.assistant.service import run_assistant  # heavy: langchain agents + langgraph, kb agent / kb chat --agent only

        printer = agent_event_printer(term)
        term.status.show("thinking…")
        try:
            answer = run_assistant(
                self.graph, question, printer, thread_id=self.thread_id,
                endpoint=self.settings.chat_endpoint, base_url=self.settings.serving_base_url,
            )
        finally:
            printer.flush()
            term.status.stop()
        self.last = answer
        if answer.stopped:
            term.error(answer.message or answer.stopped)
            return
        print_sources(term, answer.sources, text=answer.text)

    def show_sources(self, term: Terminal) -> None:
        if self.last is None:
            term.note("[dim]no answer yet in this run[/]")
            return
        print_sources(term, self.last.sources, text=self.last.text)
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
        term.status.stop()  # "loading…" ends at the prompt
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
