"""Crash and concurrency safety with real processes.

A worker process runs ``ingest.sync.job.ingest`` (what ``kb ingest`` runs) with a fast deterministic
embedding (a 32-dim hash: no model to load, so each process starts in about a second), printing a
``progress done total`` line after each batch is upserted. Tests ``kill -9`` it at chosen moments,
run it again, and check that the index converges; others query the index while it writes. One test
runs the real ``kb ingest`` command with the real model while ``kb search`` runs in a loop.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from ingest.store.base import Filter, all_ids
from ingest.store.chroma import open_store
from ingest.sync.plan import make_plan
from ingest.sync.records import NoRecords
from tests.conftest import kb_command
from tests.wire.test_sync import HashEmbeddings

WORKER = r"""
import json, sys
from pathlib import Path
from ingest.sync.job import ingest
from tests.wire.test_sync import HashEmbeddings

corpus, index, batch, delay, rebuild = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"

def progress(done, total):
    print(f"progress {done} {total}", flush=True)

print("started", flush=True)
summary = ingest([Path(corpus)], Path(index), HashEmbeddings(delay=delay), progress=progress, batch_size=batch,
                 rebuild=rebuild)
print("summary " + json.dumps(summary.to_dict()), flush=True)
"""


def paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(f"{topic} note {i}: " + " ".join(f"{topic}{i}w{w}" for w in range(50)) for i in range(n))


def make_corpus(root: Path, files: int) -> Path:
    for i in range(files):
        folder = root / f"team-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc-{i:02d}.md").write_text(f"# Doc {i}\n\n{paragraphs(f'topic{i}', 4)}\n", encoding="utf-8")
    return root


def expected_ids(root: Path) -> set[str]:
    return {i for entry in make_plan([root], NoRecords()).added for i in entry.ids}


def index_state(index_dir: Path) -> tuple[set[str], list[tuple]]:
    pages = list(open_store(index_dir, HashEmbeddings()).scan(texts=False))
    return ({i for page in pages for i in page.ids},
            [(m["root"], m["source"], m["chunk"]) for page in pages for m in page.metadatas])


def start_worker(corpus: Path, index_dir: Path, *, batch: int = 8, delay: float = 0.05, rebuild: bool = False):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(corpus), str(index_dir), str(batch), str(delay), "1" if rebuild else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},  # the child imports tests.wire
    )


def read_until(proc: subprocess.Popen, predicate, timeout: float = 120) -> str | None:
    """The first stdout line matching ``predicate``; None if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return None
            if predicate(line):
                return line
    proc.kill()
    raise AssertionError("the worker did not get there in time")


def progress_at_least(n: int):
    return lambda line: line.startswith("progress ") and int(line.split()[1]) >= n


def kill9(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: no cleanup, no finally blocks, no atexit
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def run_to_end(corpus: Path, index_dir: Path, **kwargs) -> dict:
    proc = start_worker(corpus, index_dir, **kwargs)
    line = read_until(proc, lambda l: l.startswith("summary "))
    proc.wait(timeout=60)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert line is not None and proc.returncode == 0, stderr
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.slow
def test_kill_9_at_any_moment_then_rerun_converges(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "docs", 30)
    index_dir = tmp_path / "index"
    total = len(expected_ids(corpus))
    assert total >= 100

    # 1. killed between an upsert and the records of the files it completed
    proc = start_worker(corpus, index_dir)
    assert read_until(proc, progress_at_least(40))
    kill9(proc)
    present, _ = index_state(index_dir)
    assert 40 <= len(present) < total

    # 2. files edited, deleted, renamed and added; killed right after its first batch
    for i in (3, 7, 11):
        doc = corpus / f"team-{i % 4}" / f"doc-{i:02d}.md"
        doc.write_text(doc.read_text("utf-8").replace("note 2", "revised note 2"), encoding="utf-8")
    (corpus / "team-0" / "doc-04.md").unlink()
    (corpus / "team-1" / "doc-05.md").unlink()
    (corpus / "team-2" / "doc-02.md").rename(corpus / "team-2" / "renamed-02.md")
    (corpus / "team-3" / "new.md").write_text(f"# New\n\n{paragraphs('fresh', 3)}\n", encoding="utf-8")
    proc = start_worker(corpus, index_dir)
    assert read_until(proc, progress_at_least(1))
    kill9(proc)

    # 3. killed once every chunk is upserted: in the record / delete / sweep phase
    proc = start_worker(corpus, index_dir, batch=64, delay=0)
    line = read_until(proc, lambda l: l.startswith("progress ") and l.split()[1] == l.split()[2])
    if line is not None:
        kill9(proc)

    # 4. killed at arbitrary moments (start-up, planning, writing)
    rng = random.Random(3)
    (corpus / "team-0" / "late.md").write_text(f"# Late\n\n{paragraphs('late', 4)}\n", encoding="utf-8")
    for _ in range(3):
        proc = start_worker(corpus, index_dir, batch=4, delay=0.02)
        read_until(proc, lambda l: l.startswith("started"))
        time.sleep(rng.uniform(0.05, 1.5))
        kill9(proc)

    expected = expected_ids(corpus)
    present_before, _ = index_state(index_dir)
    summary = run_to_end(corpus, index_dir)
    present, places = index_state(index_dir)
    assert present == expected  # exactly the expected chunks: nothing lost, nothing stale
    assert len(places) == len(set(places))  # no duplicates
    # the follow-up run embedded (or reused) only what was missing
    assert summary["chunks_embedded"] + summary["chunks_reused"] == len(expected - present_before)
    again = run_to_end(corpus, index_dir)
    assert again["chunks_embedded"] == again["chunks_reused"] == again["chunks_deleted"] == 0
    assert again["chunks_total"] == len(expected)


def test_a_second_ingest_exits_at_once_with_a_clear_message(tmp_path: Path, env: Path, monkeypatch) -> None:
    corpus = make_corpus(tmp_path / "docs", 12)
    index_dir = tmp_path / "busy-index"
    monkeypatch.setenv("KB_INDEX_DIR", str(index_dir))
    proc = start_worker(corpus, index_dir, batch=4, delay=0.3)
    try:
        assert read_until(proc, progress_at_least(1))  # it holds the lock now
        result = CliRunner().invoke(app, ["ingest", str(corpus)])
        assert proc.poll() is None  # refused while the first one is still running
        assert result.exit_code == 3
        assert result.stderr.strip() == (
            f"error: another 'kb ingest' is writing to the index at {index_dir}; wait for it to finish and run again"
        )
    finally:
        kill9(proc)


def test_queries_during_ingest_and_rebuild_never_fail(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "docs", 20)
    index_dir = tmp_path / "index"
    run_to_end(corpus, index_dir, batch=64, delay=0)
    for i in range(20, 32):  # more to write, and some to delete
        (corpus / "extra").mkdir(exist_ok=True)
        (corpus / "extra" / f"more-{i}.md").write_text(f"# More {i}\n\n{paragraphs(f'more{i}', 3)}\n", encoding="utf-8")
    (corpus / "team-1" / "doc-01.md").unlink()
    long_lived = open_store(index_dir, HashEmbeddings())
    errors: list[str] = []
    queries = 0
    for rebuild in (False, True):
        proc = start_worker(corpus, index_dir, batch=4, delay=0.03, rebuild=rebuild)
        while proc.poll() is None:
            for store in (open_store(index_dir, HashEmbeddings()), long_lived):  # a CLI call, and the API
                try:
                    hits = store.nearest(store.embeddings.embed_query("topic3 note 1"), 3)
                    if len(hits) != 3:
                        errors.append(f"{len(hits)} hits")
                except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                    errors.append(f"{type(exc).__name__}: {exc}")
                queries += 1
        stderr = proc.stderr.read()
        kill9(proc)
        assert proc.returncode == 0, stderr
    assert errors == [] and queries > 20
    time.sleep(1.1)
    assert long_lived.name == open_store(index_dir, HashEmbeddings()).name  # followed
    assert all_ids(long_lived, Filter(equals={"source": "extra/more-25.md"}))


@pytest.mark.slow
def test_kb_search_while_the_real_kb_ingest_runs(tmp_path: Path, env: Path, monkeypatch) -> None:
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

    corpus = tmp_path / "docs"
    (corpus / "hr").mkdir(parents=True)
    (corpus / "hr" / "pto.md").write_text("# Time off\n\nEmployees get 23 vacation days per year.\n", encoding="utf-8")
    index_dir = Path(os.environ["KB_INDEX_DIR"])
    ingest([corpus], index_dir, LocalMiniLMEmbeddings())
    make_corpus(corpus / "more", 8)  # about sixty chunks for the real model to embed
    proc = subprocess.Popen(kb_command("ingest", str(corpus), "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    runner = CliRunner()
    results = []
    while proc.poll() is None:
        results.append(runner.invoke(app, ["search", "how many vacation days", "-k", "2", "--json"]))
        time.sleep(0.2)  # leave the CPU to the ingest
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["added"] == 8
    assert results and all(r.exit_code == 0 for r in results), [r.stderr for r in results if r.exit_code][:3]
    assert all(json.loads(r.stdout)["results"][0]["source"] == "hr/pto.md" for r in results)
