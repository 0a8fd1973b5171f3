"""The status line of ``kb ask``, ``kb chat`` and ``kb agent`` until the first token.

Retrieval, model start-up and the first model call take seconds; without a sign of life the
terminal looks hung. ``Status`` shows a Rich spinner with a short text ("searching…", "writing…",
"running search_knowledge…") on stderr, only when stderr is a terminal: piped or redirected output
gets nothing extra. It is transient (erased when it stops) and stops before any answer text is
written to stdout, so the two never share a line.

Cheap to import (Rich only; no LangChain, no Chroma), so the first status byte is on the terminal
before the heavy imports of a command. ``stop_all()`` ends whatever is showing: the CLI's error
handler calls it before printing ``error: ...``.

``early_status(argv)`` (called by ``agent.cli.main`` before Typer and the commands are even
imported) shows ``kb ask``'s "searching…" (``chat``: "loading…", ``agent``: "thinking…") about
0.1 s after the process starts; it is erased while Typer parses the arguments (``pause_early``,
so a usage error prints on a clean line) and the command then ``adopt``s it and shows it again.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

_active: list[Status] = []
_early: list[Status] = []
_stderr: list[Any] = []
EARLY_TEXT = {"ask": "searching…", "chat": "loading…", "agent": "thinking…"}


def stderr_console() -> Any:
    """kb's stderr console (one per process: the early status and the CLI's messages share it)."""
    if not _stderr:
        from rich.console import Console

        _stderr.append(Console(stderr=True, highlight=False, soft_wrap=True, emoji=False))
    return _stderr[0]


def early_status(argv: Sequence[str]) -> None:
    """Show the status of ``kb ask|chat|agent`` now, before the CLI is imported (not for ``--json``,
    ``--help``, or when stderr is no terminal)."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    text = EARLY_TEXT.get(command or "")
    if text is None or any(arg in ("--json", "--help", "-h") for arg in argv) or not sys.stderr.isatty():
        return
    import atexit

    status = Status(stderr_console())
    if status.enabled:
        status.show(text)
        _early.append(status)
        atexit.register(stop_all)  # a usage error exits before any command could stop it


def pause_early() -> None:
    """Erase the early status while Typer parses the command's arguments (click prints a usage
    error to the raw stderr, past Rich): the command shows its status again a moment later."""
    for status in _early:
        status.stop()


def adopt(console: Any, *, enabled: bool = True) -> Status:
    """The status ``early_status`` is showing on ``console`` (now the caller's), or a new one."""
    if _early:
        status = _early.pop()
        if enabled and status.console is console:
            return status
        status.stop()
    return Status(console, enabled=enabled)


class Status:
    """A spinner line on ``console`` (kb's stderr console), or nothing when that is not a terminal."""

    def __init__(self, console: Any, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = bool(enabled) and bool(console.is_terminal)
        self._live: Any = None
        self._spinner: Any = None
        self.text: str | None = None

    def show(self, text: str) -> None:
        """Show (or change to) ``text``; a no-op when disabled."""
        self.text = text
        if not self.enabled:
            return
        from rich.spinner import Spinner

        if self._live is None:
            from rich.live import Live

            self._spinner = Spinner("dots", text, style="status.spinner")
            self._live = Live(self._spinner, console=self.console, refresh_per_second=12.5, transient=True)
            self._live.start(refresh=True)  # drawn now, not on the refresh thread's first tick
            _active.append(self)
        else:
            self._spinner.update(text=text)
            self._live.refresh()

    def stop(self) -> None:
        """Erase the line (before answer text, a note or an error is printed)."""
        self.text = None
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
            if self in _active:
                _active.remove(self)

    @property
    def showing(self) -> bool:
        return self._live is not None

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_all() -> None:
    for status in list(_active):
        status.stop()
