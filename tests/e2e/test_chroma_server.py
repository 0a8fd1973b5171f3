"""Server mode: with ``KB_CHROMA_URL`` the same commands use a real Chroma server (``chroma run``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import KbRunner
from tests.e2e.serving import free_port


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Chroma server on loopback, from the chromadb package's ``chroma`` command."""
    chroma = Path(sys.executable).with_name("chroma")
    data = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(data / "db"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Chroma server did not start: {(data / 'server.log').read_text()[-500:]}")
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_ingest_reingest_and_search_against_a_chroma_server(chroma_server: str, env: Path, corpus: Path,
                                                            monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_CHROMA_URL", chroma_server)
    first = kb("ingest", str(corpus), "--json")
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["index"] == chroma_server and summary["added"] == 5 and summary["chunks_embedded"] > 5
    assert not (Path(os.environ["KB_INDEX_DIR"]) / "chroma").exists()  # nothing in the embedded store

    again = json.loads(kb("ingest", str(corpus), "--json").stdout)
    assert (again["unchanged"], again["chunks_embedded"], again["chunks_total"]) == (5, 0, summary["chunks_total"])

    found = kb("search", "who approves expenses over 800 euros", "-k", "1", "--json")
    assert found.exit_code == 0, found.stderr
    top = json.loads(found.stdout)["results"][0]
    assert top["source"] == "finance/expenses.pdf" and top["page"] == 2

    rebuilt = json.loads(kb("ingest", str(corpus), "--rebuild", "--json").stdout)
    assert rebuilt["added"] == 5 and rebuilt["chunks_total"] == summary["chunks_total"]
    top = json.loads(kb("search", "VPN gateway for Berlin", "-k", "1", "--json").stdout)["results"][0]
    assert top["source"] == "it/vpn.html"

    import chromadb

    client = chromadb.HttpClient(host="localhost", port=int(chroma_server.rsplit(":", 1)[1]))
    chunk_collections = [c.name for c in client.list_collections() if c.name.startswith("kb_chunks")]
    assert len(chunk_collections) == 2  # the rebuilt generation, and the old one until the next ingest
    kb("ingest", str(corpus))
    assert len([c.name for c in client.list_collections() if c.name.startswith("kb_chunks")]) == 1


def test_an_unreachable_server_is_one_clear_error(env: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    monkeypatch.setenv("KB_CHROMA_URL", f"http://127.0.0.1:{free_port()}")
    for args in (["ingest", str(corpus)], ["search", "vacation"]):
        result = kb(*args)
        assert result.exit_code == 3
        assert result.stderr.startswith("error: cannot reach the Chroma server at http://127.0.0.1:")
        assert "KB_CHROMA_URL" in result.stderr
