"""The status line of ``kb ask``, ``kb chat`` and ``kb agent`` until the first token.

Retrieval, model start-up and the first model call take seconds; without a sign of life the
terminal looks hung. ``Status`` shows a Rich spinner with a short text ("searching…", "writing…",
"running search_knowledge…") on stderr, only when stderr is a terminal: piped or redirected output
gets nothing extra. It is transient (erased when it stops) and stops before any answer text is
written to stdout, so the two never share a line.

Cheap to import (Rich only; no LangChain, no Chroma), so the first status byte is on the terminal
before the heavy imports of a command. ``stop_all()`` ends whatever is showing: the CLI's error
handler calls it before printing ``error: ...``.
"""

from __future__ import annotations

from typing import Any

_active: list[Status] = []


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
