"""kb performance benchmark: one command, prints a table of the issue's targets.

    python -m bench.perf_bench                 # 1k, 10k and 50k chunks (50k builds once: ~3 min)
    python -m bench.perf_bench --sizes 1000,10000 --repeat 3
    python -m bench.perf_bench --json results.json

It builds the synthetic indexes it needs under ``--cache`` (default ``.bench/``, reused by later
runs; see bench/perf_corpus.py for how they are made), then measures, each several times:

- ``kb --version`` / ``kb --help`` as fresh processes;
- ``kb search`` as a fresh process at every size (the 2.5 s target is at 10k), and where the time
  of one such process goes (imports, opening the index, loading the encoder, the query);
- warm search (an open retriever, a new question each time) at every size: how search grows;
- the warm per-question overhead of ``kb ask`` at 10k: everything ``kb ask`` does per question
  (settings, query embedding, dense + BM25 search, refusal check, prompt assembly, the streamed
  call and its relay) minus a raw ``openai`` client call with the very same request body against
  the same loopback Databricks stub (tests/databricks_stub.py), interleaved, in the same run;
- peak RSS (``ru_maxrss``) and wall time of a fresh ``kb ask`` process at 10k.

Nothing here asserts: it reports median, min and max, and each target's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/perf_bench.py` works too
    sys.path.insert(0, str(REPO))

from bench.perf_corpus import build_index, questions  # noqa: E402

ANSWER = ("Employees get 25 vacation days a year [1], and up to 5 unused days carry over [2]. "
          "Requests go through the HR portal two weeks ahead [1].")
TOKEN = "dapi-bench-0000"
TARGETS = {  # row name -> (limit, unit)
    "kb --help": (0.3, "s"),
    "kb --version": (0.3, "s"),
    "kb search, fresh process, 10k": (2.5, "s"),
    "kb ask warm overhead p50, 10k": (25.0, "ms"),
    "kb ask peak RSS, 10k": (600.0, "MB"),
}


# ---------------------------------------------------------------- helpers


class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, values: list[float], unit: str, note: str = "") -> dict:
        row = {"name": name, "unit": unit, "n": len(values), "median": statistics.median(values),
               "min": min(values), "max": max(values), "values": values, "note": note}
        if name in TARGETS:
            limit, _ = TARGETS[name]
            row["target"] = limit
            row["ratio"] = row["median"] / limit
        self.rows.append(row)
        print(f"  {name}: median {_fmt(row['median'], unit)} (min {_fmt(row['min'], unit)}, max {_fmt(row['max'], unit)})",
              flush=True)
        return row


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.2f}{unit}"


def kb_command() -> list[str]:
    script = Path(sys.executable).with_name("kb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def base_env(index_dir: Path | None, work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("KB_", "DATABRICKS_", "BASE_URL", "OPENAI_", "LANGCHAIN_", "LANGSMITH_"))}
    if index_dir is not None:
        env["KB_INDEX_DIR"] = str(index_dir)
    env["KB_USAGE_LEDGER"] = str(work / "usage.sqlite")
    env.update(extra)
    return env


# Fresh processes are started by this small launcher, not by the benchmark itself: a child's
# ru_maxrss counts what it inherited before exec, and the benchmark holds whole indexes in memory.
LAUNCHER = r"""
import json, os, subprocess, sys, time
with open(os.devnull, "wb") as null:
    started = time.perf_counter()
    proc = subprocess.Popen(sys.argv[1:], stdout=null, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
print(json.dumps({"wall": wall, "rss_kb": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime,
                  "code": os.waitstatus_to_exitcode(status), "stderr": errors.decode(errors="replace")[-800:]}))
"""


def run_process(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MB, CPU seconds) of one fresh process.

    CPU time (user + system) is what the wall time would be on an idle machine for a process
    that mostly runs one thread, as these do: it shows how much of a slow wall time is waiting."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True, env=env,
                         cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    result = json.loads(out.stdout)
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(args[:3])}... exited {result['code']}: {result['stderr']}")
    return result["wall"], result["rss_kb"] / 1024, result["cpu"]


def _cpu_note(runs: list[tuple[float, float, float]]) -> str:
    return f"CPU time {statistics.median(r[2] for r in runs):.2f} s"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------- measurements


def bench_startup(res: Results, work: Path, repeat: int) -> None:
    env = base_env(work / "no-index", work)
    for flag in ("--version", "--help"):
        run_process([*kb_command(), flag], env, work)  # warm the page cache
        runs = [run_process([*kb_command(), flag], env, work) for _ in range(repeat * 2)]
        res.add(f"kb {flag}", [r[0] for r in runs], "s", note=_cpu_note(runs))


def bench_fresh_search(res: Results, work: Path, indexes: dict[int, Path], repeat: int) -> None:
    qs = iter(questions(1000, seed=3))
    for size, index_dir in indexes.items():
        env = base_env(index_dir, work)
        run_process([*kb_command(), "search", next(qs)], env, work)  # warm-up (page cache, weight stamp)
        runs = [run_process([*kb_command(), "search", next(qs)], env, work) for _ in range(repeat)]
        label = f"{size // 1000}k"
        res.add(f"kb search, fresh process, {label}", [r[0] for r in runs], "s", note=_cpu_note(runs))
        res.add(f"kb search peak RSS, {label}", [r[1] for r in runs], "MB")


PHASES = r"""
import sys, time, json
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import agent.cli; mark("import agent.cli (typer, rich)")
from agent.settings import load_settings; settings = load_settings(); mark("settings (pydantic-settings)")
import langchain_core.retrievers; mark("import langchain_core (+ langsmith)")
import agent.rag.retrieval; mark("import agent.rag.retrieval")
from agent.rag.retrieval import build_retriever
retriever = build_retriever(settings, k=5); mark(f"open the index ({type(retriever.store).__name__})")
from ingest.embeddings.weights import minilm_path
from ingest.embeddings.fast_embed import load_encoder
load_encoder(minilm_path()); mark("load the NumPy MiniLM (stamp check, mmap, tokenizer)")
retriever.invoke(sys.argv[1]); mark("first query (embed, dense + BM25 incl. loading BM25)")
print(json.dumps([(b, t1 - t0) for (a, t0), (b, t1) in zip(marks, marks[1:])]))
"""


def bench_phases(res: Results, work: Path, index_dir: Path, repeat: int) -> list[tuple[str, float, float, float]]:
    env = base_env(index_dir, work)
    qs = questions(repeat + 1, seed=5)
    runs = []
    for q in qs:
        out = subprocess.run([sys.executable, "-c", PHASES, q], capture_output=True, text=True, env=env, cwd=work,
                             check=True, stdin=subprocess.DEVNULL)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs = runs[1:]  # the first one warms the page cache
    table = []
    for i, (name, _) in enumerate(runs[0]):
        values = [run[i][1] for run in runs]
        table.append((name, statistics.median(values), min(values), max(values)))
    return table


def bench_warm_search(res: Results, indexes: dict[int, Path], count: int) -> None:
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings

    settings = load_settings()
    qs = questions(count + 3, seed=9)
    base = None
    for size, index_dir in indexes.items():
        retriever = build_retriever(load_settings(index_dir=index_dir), k=settings.top_k)
        for q in qs[:3]:
            retriever.invoke(q + " (warm-up)")
        values = [timed(lambda q=q: retriever.invoke(q)) * 1000 for q in qs[3:]]
        row = res.add(f"warm search ({settings.search_mode}), {size // 1000}k", values, "ms")
        base = base or row["median"]
        row["note"] = f"x{row['median'] / base:.2f} vs {min(indexes) // 1000}k"
        for mode in (m for m in ("dense", "bm25") if m != settings.search_mode):
            res.add(f"warm search ({mode}), {size // 1000}k",
                    [timed(lambda q=q: retriever.invoke(q + " ", mode=mode)) * 1000 for q in qs[3:]], "ms")
        # The dense step alone (50 candidates, as the retriever asks), query vectors precomputed:
        # the snapshot's exact scan vs Chroma's HNSW.
        from ingest.store.chroma import open_store

        vectors = [retriever.store.embeddings.embed_query(q) for q in qs[3:]]
        for label, store in (("snapshot, exact", retriever.store),
                             ("Chroma HNSW", open_store(index_dir, retriever.store.embeddings))):
            search = store.nearest
            search(vectors[0], 50)
            res.add(f"vector top-50 ({label}), {size // 1000}k",
                    [timed(lambda v=v: search(v, 50)) * 1000 for v in vectors], "ms")
    from ingest.embeddings.local import LocalMiniLMEmbeddings

    embeddings = LocalMiniLMEmbeddings()
    embeddings.embed_query("warm-up")
    res.add("query embedding (NumPy MiniLM), warm", [timed(lambda q=q: embeddings.embed_query(q)) * 1000 for q in qs], "ms")


def bench_warm_ask(res: Results, work: Path, index_dir: Path, count: int) -> list[tuple[str, float]]:
    """kb's per-question work vs a raw openai call with the same body, interleaved."""
    import openai

    from agent.rag.service import AnswerService
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings
    from tests.databricks_stub import DatabricksStub, Reply

    sink: list[str] = []
    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER, usage={"prompt_tokens": 900, "completion_tokens": 40})
        saved = dict(os.environ)
        os.environ.update(base_env(index_dir, work, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url,
                                   KB_MIN_RELEVANCE="0"))
        try:
            retriever = build_retriever(load_settings(), command="ask")
            client = openai.OpenAI(base_url=stub.base_url, api_key=TOKEN, max_retries=0)

            def kb_question(q: str) -> dict[str, float]:
                t0 = time.perf_counter()
                settings = load_settings()
                t1 = time.perf_counter()
                service = AnswerService.from_settings(settings, command="ask", retriever=retriever)
                t2 = time.perf_counter()
                result = None
                for kind, value in service.stream(q):
                    if kind == "token":
                        sink.append(value)
                    elif kind == "done":
                        result = value
                t3 = time.perf_counter()
                if result.refused:
                    raise RuntimeError("the bench question was refused: the corpus is off")
                assert result.text == ANSWER, result.text
                retrieval = result.timing["retrieve"]
                return {"settings": t1 - t0, "retrieval": retrieval, "chain": t2 - t1,
                        "answer": t3 - t2 - retrieval, "total": t3 - t0}

            def raw_call(body: dict) -> float:
                known = {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
                t0 = time.perf_counter()
                stream = client.chat.completions.create(
                    **{k: v for k, v in body.items() if k in known},
                    extra_body={k: v for k, v in body.items() if k not in known},
                )
                text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
                elapsed = time.perf_counter() - t0
                assert text == ANSWER, text
                return elapsed

            qs = questions(count + 3, seed=21)
            for q in qs[:3]:  # warm-up: encoder, BM25, HTTP connection pools
                kb_question(q)
                raw_call(stub.chat_requests()[-1])
            kb_runs, raw_runs = [], []
            for q in qs[3:]:
                kb_runs.append(kb_question(q))
                raw_runs.append(raw_call(stub.chat_requests()[-1]))
                stub.reset()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    kb_total = [r["total"] * 1000 for r in kb_runs]
    raw = [r * 1000 for r in raw_runs]
    overhead = [k - r for k, r in zip(kb_total, raw)]
    res.add("kb ask warm, whole question, 10k", kb_total, "ms")
    res.add("raw openai call, same request, 10k", raw, "ms")
    row = res.add("kb ask warm overhead p50, 10k", overhead, "ms")
    row["note"] = f"kb / raw = x{statistics.median(kb_total) / statistics.median(raw):.2f}"
    names = {"settings": "settings", "retrieval": "retrieval (embed + dense + BM25 + fusion)",
             "chain": "building the chain and chat client", "answer": "streamed answer through the chain"}
    parts = [(label, statistics.median(r[name] * 1000 for r in kb_runs)) for name, label in names.items()]
    parts.append(("the raw openai call it compares with", statistics.median(raw)))
    return parts


def bench_fresh_ask(res: Results, work: Path, index_dir: Path, repeat: int) -> None:
    from tests.databricks_stub import DatabricksStub, Reply

    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER)
        env = base_env(index_dir, work, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url, KB_MIN_RELEVANCE="0")
        qs = iter(questions(100, seed=31))
        run_process([*kb_command(), "ask", next(qs)], env, work)
        runs = [run_process([*kb_command(), "ask", next(qs)], env, work) for _ in range(repeat)]
    res.add("kb ask, fresh process, 10k", [r[0] for r in runs], "s", note=_cpu_note(runs))
    res.add("kb ask peak RSS, 10k", [r[1] for r in runs], "MB")


# ---------------------------------------------------------------- report


def print_report(res: Results, phases, ask_parts, header: list[str]) -> None:
    print()
    for line in header:
        print(line)
    print()
    print("| measurement | median | min | max | target | median / target; notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in res.rows:
        unit = row["unit"]
        target = f"<= {_fmt(row['target'], unit)}" if "target" in row else ""
        ratio = f"{row['ratio']:.2f}" + (" ok" if row["ratio"] <= 1 else " over") if "ratio" in row else ""
        ratio = "; ".join(part for part in (ratio, row["note"]) if part)
        print(f"| {row['name']} | {_fmt(row['median'], unit)} | {_fmt(row['min'], unit)} | {_fmt(row['max'], unit)}"
              f" | {target} | {ratio} |")
    if phases:
        print()
        print("Where a fresh `kb search` at 10k spends its time (one process, phases in order):")
        print()
        print("| phase | median | min | max |")
        print("| --- | ---: | ---: | ---: |")
        for name, median, low, high in phases:
            print(f"| {name} | {median:.3f} s | {low:.3f} s | {high:.3f} s |")
    if ask_parts:
        print()
        print("Warm `kb ask` per question at 10k, medians: " + "; ".join(f"{n} {v:.1f} ms" for n, v in ask_parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="index sizes in chunks (10000 is the target size)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each fresh-process measurement")
    parser.add_argument("--queries", type=int, default=30, help="questions for each warm measurement")
    parser.add_argument("--cache", type=Path, default=REPO / ".bench", help="where the synthetic indexes are kept")
    parser.add_argument("--json", type=Path, help="also write all measurements to this file")
    args = parser.parse_args(argv)
    args.cache = args.cache.resolve()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if 10000 not in sizes:
        sizes = sorted({*sizes, 10000})

    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # A normal install caches bytecode on first run; this environment disables writing it,
        # which would make every fresh process compile kb's own modules again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "agent"), str(REPO / "ingest")], check=False)

    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{i.get('internal_api')} {i.get('architecture', '')} x{i.get('num_threads')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")
    header = [f"kb perf bench · {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · python "
              f"{sys.version.split()[0]} · BLAS {blas or '?'} · load average at start {load_average()}"]
    args.cache.mkdir(parents=True, exist_ok=True)
    indexes = {size: build_index(args.cache, size) for size in sizes}
    res = Results()
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # no .env of the caller's: every run sees only the settings set here
        print("startup", flush=True)
        bench_startup(res, work, args.repeat)
        print("fresh kb search", flush=True)
        bench_fresh_search(res, work, indexes, args.repeat)
        phases = bench_phases(res, work, indexes[10000], args.repeat)
        print("warm search", flush=True)
        bench_warm_search(res, indexes, args.queries)
        print("warm kb ask vs raw openai", flush=True)
        ask_parts = bench_warm_ask(res, work, indexes[10000], args.queries)
        print("fresh kb ask", flush=True)
        bench_fresh_ask(res, work, indexes[10000], max(3, args.repeat // 2 + 1))
    header.append(f"load average at end {load_average()} (a busy machine makes every figure pessimistic)")
    print_report(res, phases, ask_parts, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": res.rows, "phases": phases, "ask": ask_parts},
                                        indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
