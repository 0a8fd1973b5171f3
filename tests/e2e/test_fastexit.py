"""The ``kb`` script leaves with ``os._exit`` after its atexit handlers (agent/cli/fastexit.py): exit
codes, flushed output and what atexit handlers write must be exactly as with a normal exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import fastexit

SCRIPT = r"""
import atexit, sys
from pathlib import Path
import agent.cli.status as status
marker, early = sys.argv[1], status.early_status
def early_status(argv):  # runs inside main(), after fastexit.install(), like any module the command imports
    atexit.register(lambda: Path(marker).write_text("atexit ran"))
    early(argv)
status.early_status = early_status
sys.argv = ["kb", *sys.argv[2:]]
from agent.cli import main
main()
"""


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / f"marker-{len(list(tmp_path.iterdir()))}"
    env = {**os.environ, "KB_INDEX_DIR": str(tmp_path / "index"), "COLUMNS": "100"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)
    return done, marker


@pytest.mark.slow
def test_exit_codes_output_and_atexit_handlers_survive(tmp_path: Path) -> None:
    ok, marker = run(tmp_path, "--version")
    assert ok.returncode == 0 and ok.stdout.strip().startswith("kb ")
    assert marker.read_text() == "atexit ran"

    usage, marker = run(tmp_path, "ask")  # a missing argument: Typer's usage error
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
    assert marker.read_text() == "atexit ran"

    empty = tmp_path / "empty"
    empty.mkdir()
    failed, marker = run(tmp_path, "ingest", str(empty))  # an empty folder: one error line, non-zero
    assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1].startswith("error:"), failed.stderr
    assert "Traceback" not in failed.stderr
    assert marker.read_text() == "atexit ran"


def test_status_follows_python_rules_for_exit_codes() -> None:
    for code, status in ((None, 0), (0, 0), (2, 2), (4, 4), (256 + 3, 3), ("a message", 1)):
        fastexit.record(code)
        assert fastexit._status == [status]
    fastexit._status.clear()
