"""``kb ingest`` shows its phases from the first second (issue 14, ingest UX): plain lines when stderr
is not a terminal, a Rich line on a terminal; the first output comes before the embedding model
has loaded. The model's load is made slow (a 3 s pause when its library is first imported), so
"before" does not depend on the machine's speed."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent.cli.ingest_progress import LABELS, IngestDisplay
from tests.pty_run import run_with_terminal_stderr

MARK = "<<MODEL LIBRARY LOADED>>"
# kb, with the first import of the embedding model's library (sentence-transformers or ONNX Runtime)
# slowed down by 3 s and marked on stderr once that pause is over.
SLOW_MODEL_KB = r'''
import sys, time, importlib.abc
class SlowModel(importlib.abc.MetaPathFinder):
    done = False
    def find_spec(self, name, path, target=None):
        if not SlowModel.done and name in ("sentence_transformers", "onnxruntime"):
            SlowModel.done = True
            time.sleep(3)
            sys.stderr.write("<<MODEL LIBRARY LOADED>>\n"); sys.stderr.flush()
        return None
sys.meta_path.insert(0, SlowModel())
from agent.cli.app import main
sys.argv = ["kb"] + sys.argv[1:]
main()
'''
ORDER = list(LABELS.values())


def _phases(text: str) -> list[str]:
    """The phase labels in ``text`` in order of appearance (repeats folded)."""
    found: list[str] = []
    for match in re.finditer("|".join(sorted(map(re.escape, ORDER), key=len, reverse=True)), text):
        if not found or found[-1] != match.group(0):
            found.append(match.group(0))
    return found


@pytest.mark.slow
def test_piped_ingest_prints_phase_lines_before_the_model_has_loaded(env: Path, corpus: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SLOW_MODEL_KB, "ingest", str(corpus)], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("kb ingest: ")]
    assert MARK in lines, done.stderr[-2000:]
    assert progress and progress[0] < lines.index(MARK), done.stderr[-2000:]  # a sign of life during the load
    phases = _phases(done.stderr)
    assert phases == sorted(phases, key=ORDER.index), phases  # in the job's order, none twice
    assert "\x1b" not in done.stderr  # plain lines: no terminal codes in a log
    assert done.stdout.startswith("Indexed ") and "kb ingest:" not in done.stdout  # stdout: the summary only


@pytest.mark.slow
def test_terminal_ingest_shows_phases_from_the_start(env: Path, corpus: Path) -> None:
    terminal, stdout, code = run_with_terminal_stderr(
        [sys.executable, "-c", SLOW_MODEL_KB, "ingest", str(corpus)], timeout=300,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    assert code == 0
    before = terminal[: terminal.index(MARK)]
    assert _phases(before), terminal[:2000]  # the display was up before the model's library had loaded
    phases = _phases(terminal)
    assert phases == sorted(phases, key=ORDER.index), phases
    assert stdout.startswith("Indexed ") and "\x1b" not in stdout


def test_plain_display_prints_a_line_per_phase_and_throttles_counts() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120)
    with IngestDisplay(console, plain_delay=0.0, plain_every=2.0, preload=lambda: time.sleep(0.5)) as display:
        assert not display.terminal

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 10
            while text not in buffer.getvalue():
                assert time.monotonic() < deadline, buffer.getvalue()
                time.sleep(0.02)

        display.phase("opening")
        display.phase("scanning")
        time.sleep(0.3)  # no line yet: nothing found to read
        display.phase("reading", 3, 40)
        wait_for("kb ingest: reading files 3/40")
        display.progress(0, 1000)  # returns once the model has "loaded" (0.5 s)
        assert "kb ingest: loading the embedding model" in buffer.getvalue()
        display.progress(128, 1000)
        wait_for("kb ingest: embedding chunks ")  # 0/1,000 or 128/1,000: whichever the display polled
        for done in range(256, 1000, 128):  # faster than plain_every: one line, not one per batch
            display.progress(done, 1000)
        time.sleep(0.3)
        display.progress(1000, 1000)
        wait_for("kb ingest: writing the index")
    lines = buffer.getvalue().splitlines()
    assert [line.split(" ")[2] for line in lines] == ["reading", "loading", "embedding", "writing"], lines


def test_the_model_loads_as_its_own_phase_then_chunks_are_counted_with_their_rate() -> None:
    seen: list[str] = []
    display = IngestDisplay(Console(file=io.StringIO()), enabled=False, preload=lambda: seen.append(display.text()))
    display.progress(0, 300)
    assert seen == ["loading the embedding model"]  # shown while the model loads, before any chunk
    assert display.text() == "embedding chunks 0/300"
    time.sleep(0.05)
    display.progress(100, 300)
    assert re.fullmatch(r"embedding chunks 100/300, [\d,]+ chunks/s", display.text()), display.text()
    display.progress(300, 300)
    assert display.text() == "writing the index" and seen == ["loading the embedding model"]  # loaded once
    nothing = IngestDisplay(Console(file=io.StringIO()), enabled=False, preload=lambda: seen.append("loaded"))
    nothing.progress(0, 0)  # nothing to embed: the model is not loaded at all
    assert nothing.text() == "writing the index" and seen == ["loading the embedding model"]
    remote = IngestDisplay(Console(file=io.StringIO()), enabled=False)
    remote.progress(0, 300)
    assert remote.text() == "embedding chunks 0/300"  # a served model has nothing to load here


def test_a_run_that_finds_no_file_prints_nothing_however_long_it_takes() -> None:
    buffer = io.StringIO()
    with IngestDisplay(Console(file=buffer, force_terminal=False), plain_delay=0.0) as display:
        display.phase("opening")  # e.g. then an error: the busy index, an empty folder
        time.sleep(0.3)
        display.phase("scanning")
        display.phase("reading", 0, 0)
        display.progress(0, 0)
        display.phase("lexical")
        time.sleep(0.3)
    assert buffer.getvalue() == ""


def test_a_run_over_within_the_first_second_prints_nothing() -> None:
    buffer = io.StringIO()
    with IngestDisplay(Console(file=buffer, force_terminal=False), plain_delay=1.0) as display:
        display.phase("scanning")
        display.progress(0, 0)
    assert buffer.getvalue() == ""
