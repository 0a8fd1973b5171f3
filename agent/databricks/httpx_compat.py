"""The HTTP library the installed openai client is built on: ``httpx2`` under openai>=3 (an
API-identical fork of httpx), ``httpx`` before. Objects handed to openai's clients (an ``Auth``, a
transport) must come from that library."""

from __future__ import annotations

import importlib
import re
from typing import Any


def httpx_module() -> Any:
    """``httpx2`` under openai>=3, else ``httpx`` (the library openai's clients are built from)."""
    import openai

    match = re.match(r"\D*(\d+)", str(getattr(openai, "__version__", "")))
    return importlib.import_module("httpx2" if match and int(match.group(1)) >= 3 else "httpx")
