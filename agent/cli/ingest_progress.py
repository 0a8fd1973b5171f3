"""What ``kb ingest`` shows while it runs: its phases, from the first second.

A first ingest spends seconds before the first chunk is embedded (imports, opening the index,
reading files, loading the embedding model); without a sign of life the terminal looks hung. The
job reports its phases (``ingest.sync.plan.PhaseFn``: opening, scanning, reading i/n files) and its
chunk progress (``ProgressFn``: done, total); this display turns them into:

- on a terminal (stderr is a tty): one Rich line that starts at once (spinner, phase, bar, counts,
  chunks/s while embedding, elapsed time), transient: erased when the run ends, before the summary;
- elsewhere (a pipe, a file, a CI log): plain lines on stderr, ``kb ingest: <phase>``. Nothing if the
  run is over within the first second (a no-change re-run prints only its summary) or has found no
  file to read (a run that fails early, on a busy index or an empty folder, prints its one error
  line only); otherwise the phase in progress at one second, every new phase, and the embedding
  progress every few seconds.

Phases: starting (kb's ingest code loads) -> opening the index -> scanning files -> reading files
i/n -> loading the embedding model (local model; only when there are chunks to embed) -> embedding
chunks i/n, N chunks/s -> writing the index (deletions, orphans) -> updating the BM25 index and the
query snapshot.

Cheap to import (Rich only, and ``rich.progress`` only on a terminal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

LABELS = {
    "starting": "starting",
    "opening": "opening the index",
    "scanning": "scanning files",
    "reading": "reading files",
    "loading-model": "loading the embedding model",
    "embedding": "embedding chunks",
    "writing": "writing the index",
    "lexical": "updating the BM25 index and the query snapshot",
}
UNITS = {"reading": "files", "embedding": "chunks"}


class IngestDisplay:
    """Phases and counts of one ``kb ingest`` on ``console`` (kb's stderr console).

    ``phase(name, done, total)`` and ``progress(done, total)`` are the job's callbacks. ``preload``: loads
    the local embedding model (it would otherwise load inside the first batch); called once, when the
    first chunks are about to be embedded, and shown as its own phase.
    ``plain_delay`` / ``plain_every``: when plain lines start, and how often a long phase repeats."""

    def __init__(self, console: Any, *, enabled: bool = True, preload: Callable[[], Any] | None = None,
                 plain_delay: float = 1.0, plain_every: float = 5.0) -> None:
        self.console = console
        self.enabled = enabled
        self.terminal = enabled and bool(console.is_terminal)
        self.preload = preload
        self.plain_delay = plain_delay
        self.plain_every = plain_every
        self.name = "starting"
        self.done = 0
        self.total = 0
        self.rate: float | None = None
        self._embed_start: tuple[int, float] | None = None  # (chunks, time) when embedding began
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None
        self._printed: tuple[str, str, float] | None = None  # plain mode: (phase, text, when) of the last line
        self._found_work = False  # plain mode: files to read or chunks to embed were reported

    # ------------------------------------------------------------ the job's callbacks

    def phase(self, name: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            self.name, self.done, self.total = name, done, total
            self._found_work = self._found_work or (name in UNITS and total > 0)
        self._refresh()

    def progress(self, done: int, total: int) -> None:
        """``ingest.sync.writer``'s (chunks done, chunks total): embedding, then writing. Before the first
        chunk, ``preload`` (loading the local model) runs here, shown as its own phase."""
        if total > 0 and done < total and self.preload is not None:
            preload, self.preload = self.preload, None
            with self._lock:
                self.name, self.done, self.total = "loading-model", 0, total
                self._found_work = True
            self._refresh()
            preload()
        now = time.monotonic()
        with self._lock:
            if total == 0 or done >= total:
                self.name, self.done, self.total = "writing", 0, 0
            else:
                self._found_work = True
                if self._embed_start is None:
                    self._embed_start = (done, now)
                elif now > self._embed_start[1]:
                    self.rate = (done - self._embed_start[0]) / (now - self._embed_start[1])
                self.name, self.done, self.total = "embedding", done, total
        self._refresh()

    # ------------------------------------------------------------ text

    def text(self) -> str:
        with self._lock:
            name, done, total, rate = self.name, self.done, self.total, self.rate
        label = LABELS.get(name, name)
        if name in UNITS and total:
            label += f" {done:,}/{total:,}"
            if name == "embedding" and rate:
                label += f", {rate:,.0f} chunks/s"
        return label

    # ------------------------------------------------------------ display

    def __enter__(self) -> IngestDisplay:
        if not self.enabled:
            return self
        if self.terminal:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                 TimeElapsedColumn(), console=self.console, transient=True)
            self._task = self._bar.add_task(self.text(), total=None)
            self._bar.start()
        else:
            self._thread = threading.Thread(target=self._plain_loop, name="kb-ingest-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.stop()

    def _refresh(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            counted = self.name in UNITS and self.total
            total, done = (self.total, self.done) if counted else (None, 0)
        self._bar.update(self._task, description=self.text(), total=total, completed=done)

    def _plain_loop(self) -> None:
        """A line for the phase in progress at ``plain_delay``, then one per new phase; a long phase
        repeats every ``plain_every`` seconds when its count moved (every 3x that when it did not,
        with the time spent in it), so a log shows the run is alive without flooding."""
        if self._stop.wait(self.plain_delay):
            return
        since = time.monotonic()  # when the phase shown last began
        while True:
            now = time.monotonic()
            text = self.text()
            with self._lock:
                name, found_work = self.name, self._found_work
            if not found_work:
                pass
            elif self._printed is None or self._printed[0] != name:
                self.console.print(f"kb ingest: {text}", markup=False, highlight=False)
                self._printed, since = (name, text, now), now
            elif (text != self._printed[1] and now - self._printed[2] >= self.plain_every) or (
                    now - self._printed[2] >= 3 * self.plain_every):
                self.console.print(f"kb ingest: {text} ({now - since:.0f} s)", markup=False, highlight=False)
                self._printed = (name, text, now)
            if self._stop.wait(0.2):
                return
