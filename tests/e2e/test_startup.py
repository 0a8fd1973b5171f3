"""Startup hygiene: ``kb --help`` imports no heavy library, a ``kb search`` process loads neither
torch nor chromadb yet returns what the slow path (sentence-transformers query embedding, Chroma's
own store) returns, and neither ``kb search`` nor ``kb ask`` (against the loopback Databricks stub)
imports any library of ``HEAVY_FOR_QUERIES``; ``kb search`` not even LangChain's runnables or openai.

No timings are asserted here (bench/perf_bench.py prints them); these tests check what a process
imports, which is what makes it fast, and that the fast path gives the same answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY_FOR_HELP = {"langchain_core", "langchain", "langchain_openai", "langgraph", "chromadb", "numpy", "torch",
                  "openai", "pydantic_settings", "sentence_transformers", "transformers", "fastapi", "bm25s"}
NEVER_FOR_QUERIES = {"torch", "sentence_transformers", "transformers", "chromadb", "langchain_chroma"}
# Issue 14: none of these on the kb search / kb ask path ("onnx" is the model-building package;
# onnxruntime, which runs the encoder, is allowed). bm25s is only for building the BM25 index.
HEAVY_FOR_QUERIES = NEVER_FOR_QUERIES | {"scipy", "sklearn", "langchain_community", "onnx", "pandas", "mlflow", "bm25s"}
# kb search needs no chat model and no LangChain runnables (callbacks, tracers, langsmith).
NOT_FOR_SEARCH = {"openai", "langchain_openai", "langsmith", "aiohttp"}


def _imported(stderr: str) -> set[str]:
    """Top-level package names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            names.add(module.split(".")[0])
    return names


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("KB_", "DATABRICKS_", "BASE_URL"))}
    env.update(extra)
    return env


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_nothing_heavy(flag: str, tmp_path: Path) -> None:
    result = _run([flag], env=_clean_env(KB_INDEX_DIR=str(tmp_path / "none")))
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("Usage" in result.stdout) if flag == "--help" else result.stdout.startswith("kb ")
    loaded = _imported(result.stderr) & HEAVY_FOR_HELP
    assert not loaded, f"kb {flag} imported {sorted(loaded)}"


@pytest.mark.slow
def test_search_process_loads_neither_torch_nor_chroma_and_matches_the_slow_path(indexed: Path) -> None:
    question = "How many vacation days do I get?"
    result = _run(["search", question, "--json", "-k", "4"], env=_clean_env(KB_INDEX_DIR=str(indexed)))
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = _imported(result.stderr)
    assert "langchain_core" in loaded  # the importtime parse works
    assert not (loaded & NEVER_FOR_QUERIES), f"kb search imported {sorted(loaded & NEVER_FOR_QUERIES)}"
    fast = json.loads(result.stdout)["results"]

    # The slow path, in this process: the same retriever over Chroma's own store, with queries
    # embedded by sentence-transformers.
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.store.chroma import open_store

    class ReferenceQueries(LocalMiniLMEmbeddings):
        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]  # the ingest path: a batch through the same engine

    settings = load_settings()
    retriever = build_retriever(settings, k=4)
    retriever.store = open_store(settings.index_dir, ReferenceQueries())
    slow = retriever.invoke(question)
    assert [(r["source"], r["text"]) for r in fast] == [(d.metadata["source"], d.page_content) for d in slow]
    for item, document in zip(fast, slow):
        assert item["score"] == pytest.approx(document.metadata["score"], abs=2e-4)
    assert fast and fast[0]["source"] == "hr/pto.md"


def _query_env(index_dir: Path, **extra: str) -> dict[str, str]:
    return _clean_env(KB_INDEX_DIR=str(index_dir), KB_USAGE_LEDGER=str(index_dir.parent / "startup-usage.sqlite"),
                      DATABRICKS_CONFIG_FILE=str(index_dir.parent / "no-databrickscfg"), **extra)


@pytest.mark.slow
def test_search_process_imports_no_heavy_module(indexed: Path) -> None:
    result = _run(["search", "How many vacation days do I get?", "-k", "3"], env=_query_env(indexed))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hr/pto.md" in result.stdout
    loaded = _imported(result.stderr)
    assert {"numpy", "pydantic_settings"} <= loaded  # the importtime parse works
    assert not (loaded & HEAVY_FOR_QUERIES), f"kb search imported {sorted(loaded & HEAVY_FOR_QUERIES)}"
    assert not (loaded & NOT_FOR_SEARCH), f"kb search imported {sorted(loaded & NOT_FOR_SEARCH)}"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_ask_process_imports_no_heavy_module(indexed: Path, stub_server, mode: str) -> None:
    from tests.conftest import CANARY
    from tests.databricks_stub import Reply

    stub_server.reset()
    stub_server.enqueue(Reply("You get 25 vacation days a year [1]."))
    env = _query_env(indexed, DATABRICKS_TOKEN=CANARY, base_url=stub_server.base_url, KB_MIN_RELEVANCE="0")
    result = _run(["ask", "How many vacation days do I get?", "--mode", mode], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "25 vacation days a year [1]" in result.stdout and "hr/pto.md" in result.stdout
    assert len(stub_server.chat_requests()) == 1
    loaded = _imported(result.stderr)
    assert {"langchain_openai", "openai", "numpy"} <= loaded  # the parse sees the prefetch thread's imports too
    assert not (loaded & HEAVY_FOR_QUERIES), f"kb ask imported {sorted(loaded & HEAVY_FOR_QUERIES)}"
