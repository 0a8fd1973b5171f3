"""Shared fixtures: a clean environment, the Databricks loopback server, a corpus and its index, the
``kb`` runner, and ``no_network`` (every test marked ``unit`` and everything under tests/unit/)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from agent.cli.app import app
from tests.corpus import write_corpus
from tests.databricks_stub import DatabricksStub

# A token that must never show up in any output, log, error or repr.
CANARY = "dapi-CANARY-5e1f0c2b9a7d4e63"

# The installed ``kb`` console script, for tests that need a real process.
KB_BIN = Path(sys.executable).with_name("kb")


def kb_command(*args: str) -> list[str]:
    """The argv of a real ``kb`` process (for ``subprocess.run``/``Popen``)."""
    return [str(KB_BIN), *args]

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
    if "agent.databricks.auth" in sys.modules:  # resolved connections hold tokens of earlier tests
        sys.modules["agent.databricks.auth"].reset_connections()
    if "agent.databricks.transport" in sys.modules:  # pooled connections of earlier tests
        sys.modules["agent.databricks.transport"].reset_clients()
    return work


@pytest.fixture(scope="session")
def stub_server():
    with DatabricksStub(token=CANARY) as stub:
        yield stub


@pytest.fixture
def databricks(stub_server: DatabricksStub, env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabricksStub]:
    """The loopback serving server, configured through the environment as a user would. A test may
    script its default answer (``default_responder``); the next test gets the one it had."""
    stub_server.reset()
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY)
    monkeypatch.setenv("base_url", stub_server.base_url)
    monkeypatch.setenv("KB_MAX_RETRIES", "2")
    monkeypatch.setenv("KB_TIMEOUT", "5")
    saved = stub_server.default_responder
    yield stub_server
    stub_server.default_responder = saved


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def built_index(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test corpus ingested once with the real local embedding model (read-only for tests)."""
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

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


# ---------------------------------------------------------------- kb in-process


PROGRESS_PREFIX = "kb ingest: "


class KbRunner:
    """Runs ``kb`` in-process with Typer's CliRunner and checks what every run must satisfy: no
    traceback and none of ``secrets`` (the canary token, plus what a test adds with ``forbid``) in
    stdout or stderr. Exceptions propagate (``catch_exceptions=False``). A test module adds its own
    checks or environment by overriding the fixture: ``def kb(kb): return kb.forbid(SECRET)``."""

    def __init__(self) -> None:
        self.secrets: list[str] = [CANARY]
        self.env: dict[str, str] = {}

    def forbid(self, *secrets: str) -> KbRunner:
        self.secrets.extend(secrets)
        return self

    def with_env(self, **env: str) -> KbRunner:
        """Extra environment for every run (e.g. ``COLUMNS`` for wide tables)."""
        self.env.update(env)
        return self

    def __call__(self, *args: str, input: str | None = None) -> Result:
        result = CliRunner(env=self.env).invoke(app, list(args), input=input, catch_exceptions=False)
        command = " ".join(args)
        # kb ingest's plain progress lines appear only once a run has lasted 1 s, i.e. depending on how
        # busy the machine is: they are moved to result.progress so assertions on stderr do not depend
        # on speed (tests/wire/test_ingest_progress.py tests the lines themselves, in real processes).
        kept, progress = [], []
        for line in result.stderr_bytes.decode("utf-8", "replace").splitlines(keepends=True):
            (progress if line.startswith(PROGRESS_PREFIX) else kept).append(line)
        result.stderr_bytes = "".join(kept).encode("utf-8")
        result.progress = progress  # type: ignore[attr-defined]
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            assert "Traceback" not in text, f"a traceback in the {stream} of kb {command}:\n{text[-3000:]}"
            for secret in self.secrets:
                assert secret not in text, f"a secret leaked in the {stream} of kb {command}:\n{text[-3000:]}"
        return result


@pytest.fixture
def kb() -> KbRunner:
    """``kb(*args, input=None)``: one in-process ``kb`` run, checked by ``KbRunner``."""
    return KbRunner()


# ---------------------------------------------------------------- no network


class NetworkBlocked(RuntimeError):
    """A unit test tried to reach the network (not an OSError, so no client retries or swallows it)."""


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    """Every IP socket connect, send and name lookup raises ``NetworkBlocked``: unit tests use fakes.

    Any address is refused, loopback included (a test that needs a server is a wire test); Unix
    sockets (multiprocessing, asyncio's self-pipe) still work. The attempts are yielded, and the
    test fails at teardown if there were any, even when the code under test swallowed the error.
    """
    attempts: list[str] = []

    def refuse(what: str) -> NetworkBlocked:
        attempts.append(what)
        return NetworkBlocked(f"network access in a unit test: {what} (use a fake, or move the test to tests/wire)")

    def guarded(name: str):
        real = getattr(socket.socket, name)

        def method(self: socket.socket, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise refuse(f"socket.{name}{args!r}")
            return real(self, *args, **kwargs)

        return method

    with pytest.MonkeyPatch.context() as patch:  # its own: undone before the check below
        for name in ("connect", "connect_ex", "sendto"):
            patch.setattr(socket.socket, name, guarded(name))

        def lookup(name: str):
            def function(host, *args, **kwargs):
                raise refuse(f"socket.{name}({host!r})")

            return function

        for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
            patch.setattr(socket, name, lookup(name))
        yield attempts
    if attempts:
        pytest.fail(f"the test tried to reach the network {len(attempts)} time(s): {attempts[:5]}")


@pytest.fixture(autouse=True)
def _unit_tests_have_no_network(request: pytest.FixtureRequest) -> None:
    """``@pytest.mark.unit`` anywhere blocks the network (tests/unit/conftest.py does it for its tree)."""
    if request.node.get_closest_marker("unit") is not None:
        request.getfixturevalue("no_network")
