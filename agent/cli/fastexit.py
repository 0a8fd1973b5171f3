"""Leave the ``kb`` process without the interpreter's module teardown.

After a command has finished (its output flushed, every ``atexit`` handler run: the usage ledger,
MLflow's trace export, logging), CPython still destroys every module and object one by one:
LangChain, openai, pydantic models, the ONNX Runtime session. Measured on ``kb ask``: 0.6-0.7 s
between the last atexit handler and the process's end, ~18 % of a fresh question, spent on
memory the operating system frees anyway. ``install()`` registers, before anything else is
imported, an ``atexit`` handler that therefore runs last (handlers run in reverse order), flushes
the standard streams and calls ``os._exit`` with the command's exit status.

A handler registered before ``install()`` would run after it, i.e. never: ``main`` installs it first
thing, before any other kb or library module is imported (tests/e2e/test_fastexit.py checks that exit
codes, output and later handlers are as with a normal exit). Only the ``kb`` script's ``main`` installs it; code that imports kb as a library (notebooks,
tests' in-process runs, ``kb serve``'s workers under uvicorn) exits as Python normally does.
"""

from __future__ import annotations

import atexit
import os
import sys

_status: list[int] = []


def install() -> None:
    atexit.register(_leave)


def record(code: object) -> None:
    """The exit status Python would use for ``SystemExit(code)``."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:  # SystemExit("message"): Python prints it to stderr and exits 1
        status = 1
    _status[:] = [status]


def _leave() -> None:
    if not _status:  # an uncaught exception or a signal: let Python finish the usual way
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing left to write to
            pass
    os._exit(_status[0])
