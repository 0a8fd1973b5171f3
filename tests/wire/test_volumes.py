"""Unity Catalog volumes as a source (ingest/volumes.py): listed and downloaded through the real
databricks-sdk Files API client against the loopback server of tests/vector_search_stub.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.errors import UsageError
from ingest.store.chroma import open_store, release_clients
from ingest.sync.job import ingest
from tests.vector_search_stub import VectorSearchStub
from tests.wire.test_sync import HashEmbeddings

VOLUME = "/Volumes/main/kb/docs"


@pytest.fixture
def vs():
    with VectorSearchStub() as stub:
        stub.list_page = 2  # every folder listing is paginated (page_token)
        yield stub


def client(stub: VectorSearchStub):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    return WorkspaceClient(config=Config(host=stub.host_url, token=stub.token, retry_timeout_seconds=10))


def run(stub, index_dir: Path, *paths: str, **kw):
    return ingest(list(paths) or [VOLUME], index_dir, HashEmbeddings(), workspace=lambda: client(stub),
                  max_bytes=kw.pop("max_bytes", 10_000), **kw)


def downloads(stub) -> list[str]:
    return [r[1][len("/api/2.0/fs/files"):] for r in stub.calls("", "GET") if r[1].startswith("/api/2.0/fs/files/")]


def corpus(stub) -> None:
    stub.put_file(f"{VOLUME}/hr/pto.md", b"# PTO\n\nEveryone gets 25 days of paid time off a year.\n", 1_700_000_000_000)
    stub.put_file(f"{VOLUME}/it/vpn.txt", b"Connect to the VPN with the hardware token.\n", 1_700_000_000_000)
    stub.put_file(f"{VOLUME}/it/page.html", b"<html><title>Wifi</title><body><p>The wifi is kb-guest.</p></body></html>")
    stub.put_file(f"{VOLUME}/it/deep/a/b/notes.md", b"# Notes\n\nNested notes.\n")
    stub.put_file(f"{VOLUME}/bin/tool.exe", b"MZ" + b"\0" * 100)  # unsupported: reported, never downloaded
    stub.put_file(f"{VOLUME}/big.md", b"x" * 20_000)  # over the cap: reported, never downloaded
    stub.put_file(f"{VOLUME}/.git/config", b"[core]\n")  # hidden: ignored


def test_a_volume_is_ingested_edited_and_re_ingested(vs, tmp_path):
    corpus(vs)
    index_dir = tmp_path / "index"
    first = run(vs, index_dir)
    assert (first.added, first.deleted) == (4, 0)
    assert {s.source: s.reason for s in first.skipped}.keys() == {"bin/tool.exe", "big.md"}
    assert "unsupported" in {s.source: s.reason for s in first.skipped}["bin/tool.exe"]
    fetched = downloads(vs)
    assert sorted(fetched) == sorted(f"{VOLUME}/{p}" for p in ("hr/pto.md", "it/vpn.txt", "it/page.html",
                                                               "it/deep/a/b/notes.md"))
    assert any("page_token" in r[2] for r in vs.calls("", "GET"))  # listings were paginated
    store = open_store(index_dir, HashEmbeddings())
    try:
        metas = [m for page in store.scan(texts=False) for m in page.metadatas]
        assert {m["root"] for m in metas} == {VOLUME}  # recorded as the volume path, not the local mirror
        assert {m["source"] for m in metas} == {"hr/pto.md", "it/vpn.txt", "it/page.html", "it/deep/a/b/notes.md"}

        again = run(vs, index_dir)
        assert (again.unchanged, again.chunks_embedded) == (4, 0) and len(downloads(vs)) == 4  # nothing downloaded

        vs.put_file(f"{VOLUME}/hr/pto.md", b"# PTO\n\nEveryone gets 30 days of paid time off a year.\n",
                    1_700_000_100_000)
        vs.remove_file(f"{VOLUME}/it/vpn.txt")
        dry = ingest([f"dbfs:{VOLUME}"], index_dir, None, dry_run=True, workspace=lambda: client(vs), max_bytes=10_000)
        assert (dry.changed, dry.deleted) == (1, 1)
        mirrored = index_dir / "volumes" / VOLUME.lstrip("/") / "hr" / "pto.md"
        assert b"25 days" in mirrored.read_bytes()  # a dry run left the mirror alone
        third = run(vs, index_dir, f"dbfs:{VOLUME}")  # the dbfs: form is the same volume, same ids
        assert (third.changed, third.deleted, third.unchanged) == (1, 1, 2)
        assert downloads(vs).count(f"{VOLUME}/hr/pto.md") == 3  # first run, dry run, this run
        texts = [t for page in store.scan() for t in page.texts]
        assert any("30 days" in t for t in texts) and not any("25 days" in t for t in texts)
        assert not any("VPN" in t for t in texts)
        assert not (index_dir / "volumes" / VOLUME.lstrip("/") / "it" / "vpn.txt").exists()
    finally:
        release_clients()


def test_a_folder_inside_the_volume_keeps_the_volume_root_and_a_missing_path_is_one_error(vs, tmp_path):
    corpus(vs)
    index_dir = tmp_path / "index"
    run(vs, index_dir)
    vs.put_file(f"{VOLUME}/it/vpn.txt", b"Connect to the VPN with a new token.\n", 1_700_000_200_000)
    part = run(vs, index_dir, f"{VOLUME}/it")
    assert (part.changed, part.unchanged, part.deleted) == (1, 2, 0)  # hr/ is outside the scope: kept
    with pytest.raises(UsageError, match="no such file or folder"):
        run(vs, index_dir, f"{VOLUME}/nothing-here")
    with pytest.raises(UsageError, match="volume path"):
        run(vs, index_dir, "dbfs:/Volumes/main/kb")
    release_clients()


def test_a_download_longer_than_listed_is_stopped_and_reported(vs, tmp_path, monkeypatch):
    vs.put_file(f"{VOLUME}/a.md", b"# A\n\nshort\n", 1_700_000_000_000)
    original = vs._directory

    def lying(method, path, query):  # the listing says 5 bytes; the download sends more
        status, payload, extra = original(method, path, query)
        for entry in payload.get("contents", []) if isinstance(payload, dict) else []:
            if entry.get("name") == "a.md":
                entry["file_size"] = 5
        return status, payload, extra

    monkeypatch.setattr(vs, "_directory", lying)
    summary = run(vs, tmp_path / "index")
    assert summary.added == 0 and "changed while downloading" in summary.skipped[0].reason
    assert not list((tmp_path / "index" / "volumes").rglob("a.md"))
    release_clients()
