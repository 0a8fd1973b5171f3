"""`kb`: the command line (the Typer app in ``app``), the chat/agent terminal (``repl``) and
``--explain`` tables (``explain``). Terminal-safe output helpers live in ``agent.terminal``."""

from agent.cli.app import app, main

__all__ = ["app", "main"]
