"""Run a command with its stderr on a pseudo-terminal (as in a shell) and its stdout piped.

Shared by the tests of what kb shows on a terminal (status lines, ingest progress): Rich only draws
live displays when stderr is a terminal, so a pipe would test a different program.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time


def run_with_terminal_stderr(argv: list[str], *, env: dict[str, str], timeout: float = 120) -> tuple[str, str, int]:
    """``argv`` to the end (or ``timeout``): what it drew on the terminal, its stdout, its exit code."""
    master, slave = pty.openpty()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    stdout = process.stdout.read().decode() if process.stdout else ""
    code = process.wait(timeout=30)
    return b"".join(chunks).decode(errors="replace"), stdout, code
