"""``kill -9`` of a ``kb ingest`` writing a Databricks Vector Search index (the loopback server of
tests/vector_search_stub.py): the next run converges with zero duplicate or stale rows on the server."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ingest.sync.records import Records
from tests.vector_search_stub import VectorSearchStub
from tests.wire.test_vector_search import INDEX, run

WORKER = r"""
import sys
from pathlib import Path
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from ingest.store.vector_search import VectorSearchConfig
from ingest.sync.job import ingest
from tests.wire.test_sync import HashEmbeddings

corpus, index, host, token = sys.argv[1:5]

def progress(done, total):
    print(f"progress {done} {total}", flush=True)

config = VectorSearchConfig(index="main.kb.chunks", endpoint="kb-endpoint", poll_seconds=0.01)
client = lambda: WorkspaceClient(config=Config(host=host, token=token))
ingest([Path(corpus)], Path(index), HashEmbeddings(delay=0.05), progress=progress, batch_size=8, vector_search=config,
       workspace=client)
print("done", flush=True)
"""


def write_docs(root: Path, version: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        sections = "\n\n".join(f"## Part {j}\n\n" + f"Document {i} part {j} version {version if i % 3 == 0 else 0}. "
                               * 40 for j in range(6))
        (root / f"doc{i:02}.md").write_text(f"# Doc {i}\n\n{sections}\n", encoding="utf-8")
    return root


def kill_after(args: list[str], lines: int) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE, text=True, env=env)
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if not ready:
                continue
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("progress"):
                seen += 1
                if seen >= lines:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            assert line.strip() != "done", "the run finished before it could be killed"
    finally:
        process.kill()
        process.wait(timeout=10)
    assert seen >= lines


def test_kill_9_mid_ingest_then_rerun_leaves_no_duplicate_or_stale_rows(tmp_path):
    with VectorSearchStub() as stub:
        docs = write_docs(tmp_path / "docs", 1)
        index_dir = tmp_path / "index"
        args = [str(docs), str(index_dir), stub.host_url, stub.token]
        kill_after(args, 3)  # killed while upserting the first run
        partial = set(stub.rows(INDEX))
        assert partial  # some rows reached the server before the kill
        write_docs(docs, 2)  # documents change between the crash and the next runs
        (docs / "doc11.md").unlink()
        kill_after(args, 2)  # killed again, mid-way through the changed documents
        summary = run([docs], index_dir, stub)
        rows = stub.rows(INDEX)
        records = Records(index_dir, collection=f"databricks:{INDEX}")
        try:
            expected = {i for root in records.roots() for i in records.expected_ids(root)}
        finally:
            records.close()
        assert set(rows) == expected and summary.chunks_total == len(rows)  # nothing stale, nothing missing
        places = [(r["source"], r["chunk"]) for r in rows.values()]
        assert len(places) == len(set(places))  # no chunk twice
        assert {r["source"] for r in rows.values()} == {f"doc{i:02}.md" for i in range(11)}
        assert all("version 1" not in r["text"] for r in rows.values())
        again = run([docs], index_dir, stub)
        assert again.chunks_embedded == 0 and again.unchanged == 11
        assert json.loads(rows[next(iter(rows))]["metadata"])["source"]
