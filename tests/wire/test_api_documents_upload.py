"""``POST /api/documents``: writers add files from the web page; they are stored in the upload folder
inside an ingested root and indexed by the same ``kb ingest`` job (a child process), so a search
finds them at once. Non-writers get 403; oversized, hostile or unreadable files are refused with a
clear message and leave nothing behind; a running ``kb ingest`` makes an upload answer 409.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from agent.api import create_app
from agent.settings import load_settings
from tests.live_server import LiveServer

WRITER, READER = "writer-key-0123456789abcdef", "reader-key-0123456789abcdef"
MARK = "xylophonewombat"


@pytest.fixture
def server(corpus: Path, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

    knowledge = tmp_path / "knowledge"
    shutil.copytree(corpus, knowledge)
    index_dir = tmp_path / "index"
    ingest([knowledge], index_dir, LocalMiniLMEmbeddings())
    monkeypatch.setenv("KB_INDEX_DIR", str(index_dir))
    monkeypatch.setenv("KB_KNOWLEDGE_DIR", str(knowledge))
    monkeypatch.setenv("KB_USAGE_LEDGER", str(tmp_path / "usage.sqlite"))
    monkeypatch.setenv("KB_API_KEYS", f"ann:{WRITER}:writer,bob:{READER}")
    monkeypatch.setenv("KB_API_MAX_BODY_BYTES", str(256 * 1024))
    with LiveServer(create_app(load_settings())) as live:
        live.knowledge = knowledge
        yield live


def _client(server: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def test_a_writer_uploads_markdown_and_can_search_it(server: LiveServer) -> None:
    with _client(server, WRITER) as ann, _client(server, READER) as bob:
        listing = ann.get("/api/documents").json()
        assert listing["can_upload"] is True and listing["upload_limit"] == 256 * 1024 - 4096
        assert all(d["indexed_at"].endswith("Z") and d["chunks"] >= 1 for d in listing["documents"])
        before = {d["source"] for d in listing["documents"]}

        text = f"# Parking rules\n\nVisitors park on level 3. Code word {MARK}.\n"
        response = ann.post("/api/documents", files={"file": ("../../etc/Parking rules!.md", text, "text/markdown")})
        assert response.status_code == 200, response.text
        added = response.json()
        # the name is reduced to its last part, odd characters replaced; stored under uploads/
        assert added["source"] == "uploads/Parking rules_.md" and added["status"] == "added"
        assert added["title"] == "Parking rules" and added["chunks"] >= 1
        assert (server.knowledge / "uploads" / "Parking rules_.md").read_text() == text

        hits = bob.post("/api/search", json={"query": f"visitors parking level 3 {MARK}", "k": 3}).json()
        assert hits["results"][0]["source"] == "uploads/Parking rules_.md"
        after = {d["source"] for d in bob.get("/api/documents").json()["documents"]}
        assert after == before | {"uploads/Parking rules_.md"}
        assert bob.get("/api/documents").json()["can_upload"] is False

        again = ann.post("/api/documents", files={"file": ("Parking rules!.md", text + "\nUpdated.\n", "text/markdown")})
        assert again.status_code == 200 and again.json()["status"] == "replaced"


def test_a_reader_gets_403_and_nothing_is_written(server: LiveServer) -> None:
    with _client(server, READER) as bob:
        response = bob.post("/api/documents", files={"file": ("notes.md", "# Notes\n\nhello\n", "text/markdown")})
    assert response.status_code == 403
    assert "writer" in response.json()["error"]["message"]
    assert not (server.knowledge / "uploads").exists()


def test_oversized_hostile_and_unreadable_files_are_refused(server: LiveServer) -> None:
    uploads = server.knowledge / "uploads"
    with _client(server, WRITER) as ann:
        big = ann.post("/api/documents", files={"file": ("big.md", "a" * (300 * 1024), "text/markdown")})
        assert big.status_code == 413 and "KB_API_MAX_BODY_BYTES" in big.json()["error"]["message"]
        just_over = ann.post("/api/documents", files={"file": ("big.md", "a" * (256 * 1024 - 4000), "text/markdown")})
        assert just_over.status_code == 413 and "too large" in just_over.json()["error"]["message"]

        for name in ("run.exe", ".hidden", "..", "noext", "docs/", "___.md"):
            refused = ann.post("/api/documents", files={"file": (name, "x", "application/octet-stream")})
            assert refused.status_code == 400, name
            assert "only files named like" in refused.json()["error"]["message"]

        # a "PDF" that is not one: the parse worker skips it; the file is refused and removed again
        fake = ann.post("/api/documents", files={"file": ("report.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 500,
                                                           "application/pdf")})
        assert fake.status_code == 422, fake.text
        assert fake.json()["error"]["message"].startswith("'report.pdf' was not added: ")
        assert not (uploads / "report.pdf").exists()

        listed = {d["source"] for d in ann.get("/api/documents").json()["documents"]}
        assert not any(s.startswith("uploads/") for s in listed)


def test_an_upload_while_kb_ingest_runs_is_409(server: LiveServer) -> None:
    from ingest.store.folder import writer_lock

    with writer_lock(Path(load_settings().index_dir)), _client(server, WRITER) as ann:
        busy = ann.post("/api/documents", files={"file": ("notes.md", "# Notes\n\nhello\n", "text/markdown")})
    assert busy.status_code == 409
    assert "another 'kb ingest'" in busy.json()["error"]["message"]
    assert not (server.knowledge / "uploads" / "notes.md").exists()
