"""Ingestion benchmark (not a test): prints the issue's three figures.

    python -m bench.ingest_bench                  # 230 files, 2,070 chunks of ~770 characters
    python -m bench.ingest_bench --files 500      # bigger corpus
    python -m bench.ingest_bench --json out.json

1. First-ingest throughput of the local pipeline (discover, load, split, embed with all-MiniLM-L6-v2,
   write to Chroma, record, BM25) against the raw engine's ``encode`` (ONNX Runtime) of the very same chunk
   texts, measured in the same process with the same loaded model (target: >= 85%).
   Raw encode and the pipeline alternate over 5 slices of the corpus, so that other load on the
   machine hits both alike.
2. A no-change re-run's time as a share of the first ingest's (target: <= 3%), in-process; the wall
   time of a real ``kb ingest`` process on the unchanged corpus is printed too (it adds Python start-up
   and imports, which do not grow with the corpus).
3. One file edited: how many chunks are embedded again (target: only that file's changed chunks).

The corpus is synthetic English (policy/runbook-like sentences), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = """the a to of and in for is on with that by this be are as or from at an will your can must should each
when after before any all new per our team use within without about also only if not more than other may
into over under their then there these which who while where how request approval access policy process
document page step example note required owner review weekly monthly daily time days hours report system
service data account vacation leave holiday payroll expense receipt travel hotel invoice vendor budget
forecast quarter audit compliance security password laptop badge onboarding benefits pension bonus salary
manager oncall incident pager escalation postmortem outage runbook deploy rollback release pipeline build
cluster spark databricks notebook workspace catalog schema table delta warehouse query dashboard alert
metric latency throughput stream batch job scheduler model training feature endpoint serving token""".split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(9, 18))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, low: int = 720, high: int = 784) -> str:
    text = sentence(rng)
    while len(text) < low:
        nxt = sentence(rng)
        if len(text) + 1 + len(nxt) <= high:
            text += " " + nxt
    return text


def write_corpus(root: Path, files: int, sections: int, seed: int = 11) -> Path:
    """``files`` markdown files: a title and an intro, then ``sections`` headed sections, each one
    chunk of ~740-800 characters."""
    rng = random.Random(seed)
    for i in range(files):
        folder = root / f"team-{i % 12:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        parts = [f"# Guide {i}\n\n{paragraph(rng)}\n"]
        for s in range(sections):
            parts.append(f"## Section {s}\n\n{paragraph(rng)}\n")
        (folder / f"guide-{i:04d}.md").write_text("\n".join(parts), encoding="utf-8")
    past = time.time() - 120  # as files are on a real disk: not written in the last instant
    for path in root.rglob("*.md"):
        os.utime(path, (past, past))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=230)
    parser.add_argument("--sections", type=int, default=8, help="sections (about one chunk each) per file")
    parser.add_argument("--keep", type=Path, help="keep the corpus and index in this folder")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--no-cli", action="store_true", help="skip the real 'kb ingest' process timing")
    parser.add_argument("--slices", type=int, default=5, help="alternate raw encode and ingest this many times")
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest
    from ingest.sync.plan import make_plan
    from ingest.sync.records import NoRecords

    work = args.keep or Path(tempfile.mkdtemp(prefix="kb-ingest-bench-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    stage = write_corpus(work / "stage", args.files, args.sections)
    corpus = work / "docs"
    index_dir = work / "index"
    slices: list[list[Path]] = [[] for _ in range(args.slices)]
    for i, path in enumerate(sorted(stage.rglob("*.md"))):
        slices[i * args.slices // args.files].append(path)

    print(f"corpus: {args.files} files, written to {corpus} in {args.slices} slices", flush=True)
    embeddings = LocalMiniLMEmbeddings()
    started = time.perf_counter()
    model = embeddings.encoder()  # the ONNX Runtime engine ingest embeds with
    load_seconds = time.perf_counter() - started
    all_texts = [c.embedded for entry in make_plan([stage], NoRecords()).added for c in entry.chunks]  # what ingest embeds
    chars = sum(len(t) for t in all_texts) / len(all_texts)
    print(f"chunks: {len(all_texts)} (mean {chars:.0f} characters); model loaded in {load_seconds:.1f} s", flush=True)
    model.encode(all_texts[:64], batch_size=embeddings.batch_size)  # warm-up

    # Raw encode and the pipeline alternate slice by slice (encode the slice's chunks, then move its
    # files into the corpus and ingest), so a machine whose load changes during the run affects both
    # alike. The ingest of slice k also re-checks slices 1..k-1 (unchanged), which only adds to its
    # time. CPU time (all threads of this process, Chroma's included) is printed too.
    raw_seconds = raw_cpu = first_seconds = first_cpu = 0.0
    embedded = 0
    for number, files in enumerate(slices, 1):
        texts = [c.embedded for f in files for entry in make_plan([f], NoRecords()).added for c in entry.chunks]
        wall, cpu = time.perf_counter(), time.process_time()
        model.encode(texts, batch_size=embeddings.batch_size)
        raw_seconds += time.perf_counter() - wall
        raw_cpu += time.process_time() - cpu
        for path in files:
            target = corpus / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)  # keeps the (old) modification time
        wall, cpu = time.perf_counter(), time.process_time()
        summary = ingest([corpus], index_dir, embeddings)
        first_seconds += time.perf_counter() - wall
        first_cpu += time.process_time() - cpu
        embedded += summary.chunks_embedded
        print(f"slice {number}/{args.slices}: {len(texts)} chunks; raw {raw_seconds:.1f} s, "
              f"pipeline {first_seconds:.1f} s so far", flush=True)
    assert embedded == len(all_texts), (embedded, len(all_texts))
    texts = all_texts

    started = time.perf_counter()
    again = ingest([corpus], index_dir, embeddings)
    again_seconds = time.perf_counter() - started
    assert again.chunks_embedded == 0

    cli_seconds = None
    if not args.no_cli:
        kb = Path(sys.executable).with_name("kb")
        env = dict(os.environ, KB_INDEX_DIR=str(index_dir))
        started = time.perf_counter()
        done = subprocess.run([str(kb), "ingest", str(corpus), "--json"], capture_output=True, text=True, env=env)
        cli_seconds = time.perf_counter() - started
        assert done.returncode == 0 and json.loads(done.stdout)["chunks_embedded"] == 0, done.stderr

    edited = corpus / "team-03" / "guide-0003.md"
    text = edited.read_text("utf-8")
    edited.write_text(text.replace("## Section 5\n\n", "## Section 5\n\nThis sentence was added by the benchmark. "),
                      encoding="utf-8")
    file_chunks = sum(1 for entry in make_plan([edited], NoRecords()).added for _ in entry.chunks)
    started = time.perf_counter()
    changed = ingest([corpus], index_dir, embeddings)
    change_seconds = time.perf_counter() - started

    raw_rate = len(texts) / raw_seconds
    pipeline_rate = len(texts) / first_seconds
    figures = {
        "chunks": len(texts),
        "files": args.files,
        "raw_encode_chunks_per_s": round(raw_rate, 1),
        "first_ingest_chunks_per_s": round(pipeline_rate, 1),
        "throughput_vs_raw": round(pipeline_rate / raw_rate, 3),
        "throughput_vs_raw_cpu": round(raw_cpu / first_cpu, 3),
        "first_ingest_s": round(first_seconds, 2),
        "no_change_rerun_s": round(again_seconds, 3),
        "no_change_share": round(again_seconds / first_seconds, 4),
        "no_change_cli_process_s": round(cli_seconds, 2) if cli_seconds is not None else None,
        "one_file_change_embedded": changed.chunks_embedded,
        "one_file_change_file_chunks": file_chunks,
        "one_file_change_s": round(change_seconds, 2),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    _print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _print_table(f: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kb ingest benchmark: {f['chunks']} chunks in {f['files']} files, {f['cpu_count']} CPUs "
                        f"(load average {f['load_average']:.1f})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("raw engine encode (ONNX Runtime)", f"{f['raw_encode_chunks_per_s']:.1f} chunks/s", "")
    table.add_row("first ingest (whole pipeline)", f"{f['first_ingest_chunks_per_s']:.1f} chunks/s", "")
    table.add_row("  pipeline / raw (wall time)", f"{f['throughput_vs_raw']:.0%}", ">= 85%")
    table.add_row("  pipeline / raw (CPU time)", f"{f['throughput_vs_raw_cpu']:.0%}", ">= 85%")
    table.add_row("first ingest time", f"{f['first_ingest_s']:.1f} s", "")
    table.add_row("no-change re-run (in-process)", f"{f['no_change_rerun_s']:.3f} s", "")
    table.add_row("  share of first ingest", f"{f['no_change_share']:.2%}", "<= 3%")
    if f["no_change_cli_process_s"] is not None:
        table.add_row("no-change 'kb ingest' process, wall", f"{f['no_change_cli_process_s']:.2f} s", "")
        table.add_row("  share of first ingest (in-process)", f"{f['no_change_cli_process_s'] / f['first_ingest_s']:.2%}",
                      "")
    table.add_row("one file edited: chunks embedded", f"{f['one_file_change_embedded']} of the file's "
                  f"{f['one_file_change_file_chunks']}", "that file only")
    table.add_row("one file edited: time", f"{f['one_file_change_s']:.2f} s", "")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
