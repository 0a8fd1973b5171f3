"""Import modules on a background thread while the main thread works: ``kb ask``'s answer stack.

A fresh ``kb ask`` spends most of its time importing LangChain, langchain_openai and openai. None
of that is needed until the passages are found, and finding them is mostly NumPy and ONNX Runtime
work that releases the GIL (loading the encoder, embedding the question, the dense scan, the BM25
column sums, SQLite), so the imports run on a thread meanwhile. The main thread may still be
importing too (ONNX Runtime loads with the encoder, on the first embedding); Python's per-module
import locks make a module both threads need load once, the other thread waiting. A failed import here is ignored: the main thread imports the module again when
it needs it and reports the error there, as without prefetching.
"""

from __future__ import annotations

import importlib
import threading


def _load(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the main thread's own import reports it
            return


def prefetch(*names: str) -> threading.Thread:
    """Start importing ``names`` (in order) on a daemon thread; ``join()`` it before using them."""
    thread = threading.Thread(target=_load, args=(names,), name="kb-prefetch", daemon=True)
    thread.start()
    return thread
