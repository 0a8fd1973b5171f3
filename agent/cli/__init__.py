"""`kb`: the command line (the Typer app in ``app``), the chat/agent terminal (``repl``) and
``--explain`` tables (``explain``). Terminal-safe output helpers live in ``agent.terminal``.

``main`` (the ``kb`` script) shows ``kb ask``'s status line before importing Typer and the commands
(``agent.cli.status.early_status``): the terminal shows a sign of life ~0.1 s after the start.
"""

import sys


def main() -> None:
    from agent.cli import fastexit

    fastexit.install()  # first atexit handler, so it runs last: skips the interpreter's teardown
    from agent.cli.status import early_status  # Rich only

    early_status(sys.argv[1:])
    from agent.cli.app import main as run

    try:
        run()
    except SystemExit as exc:
        fastexit.record(exc.code)
        raise
    fastexit.record(0)


__all__ = ["main"]
