"""Shared fixtures: a clean environment, the Databricks loopback server, a corpus and its index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.corpus import write_corpus
from tests.databricks_stub import DatabricksStub

# A token that must never show up in any output, log, error or repr.
CANARY = "dapi-CANARY-5e1f0c2b9a7d4e63"

_OUR_VARS = ("DATABRICKS_", "KB_", "BASE_URL", "OPENAI_", "LANGCHAIN_", "LANGSMITH_")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration from the developer's shell or .env: a fresh working directory."""
    for name in list(os.environ):
        if name.upper().startswith(_OUR_VARS):
            monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("KB_INDEX_DIR", str(tmp_path / "index"))
    # No ~/.databrickscfg of the developer's: a test that wants a profile writes its own.
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    import sys

    if "agent.databricks.auth" in sys.modules:  # resolved connections hold tokens of earlier tests
        sys.modules["agent.databricks.auth"].reset_connections()
    return work


@pytest.fixture(scope="session")
def stub_server():
    with DatabricksStub(token=CANARY) as stub:
        yield stub


@pytest.fixture
def databricks(stub_server: DatabricksStub, env: Path, monkeypatch: pytest.MonkeyPatch) -> DatabricksStub:
    """The loopback serving server, configured through the environment as a user would."""
    stub_server.reset()
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY)
    monkeypatch.setenv("base_url", stub_server.base_url)
    monkeypatch.setenv("KB_MAX_RETRIES", "2")
    monkeypatch.setenv("KB_TIMEOUT", "5")
    return stub_server


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def built_index(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test corpus ingested once with the real local embedding model (read-only for tests)."""
    from ingest.embeddings import LocalMiniLMEmbeddings
    from ingest.sync import ingest

    index_dir = tmp_path_factory.mktemp("built-index")
    ingest([corpus], index_dir, LocalMiniLMEmbeddings())
    return index_dir


@pytest.fixture
def indexed(env: Path, built_index: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment pointed at the shared prebuilt index."""
    monkeypatch.setenv("KB_INDEX_DIR", str(built_index))
    # The usage ledger would live in KB_INDEX_DIR: keep this test's own, outside the shared index.
    monkeypatch.setenv("KB_USAGE_LEDGER", str(env.parent / "usage.sqlite"))
    return built_index
