"""Issue 14 "speed a person feels": the startup and per-question ratios, measured in one run.

    python -m bench.startup_bench fresh  --index .bench/index-10000 [--repeat 5]
    python -m bench.startup_bench warm   --index .bench/index-10000 [--count 40]
    python -m bench.startup_bench hybrid --index .bench/index-50000 [--count 40]

``fresh``: interleaved fresh processes: ``kb search`` vs ``python -c "import numpy"``; ``kb ask``
(stdout to /dev/null, wall time to exit = time to the last token) vs a bare script that imports
``openai`` and makes the very same streamed request to the same loopback stub
(tests/databricks_stub.py); the first byte ``kb ask`` writes to a terminal (stderr on a pty).
``warm``: kb's per-question work through ``AnswerService`` minus the raw ``openai`` call with the
same body, interleaved. ``hybrid``: warm hybrid search p50 (query vectors embedded beforehand and
cached by the retriever, so the embedding is excluded; a second row includes it).

Medians; nothing asserts. bench/perf_bench.py is the issue's official table.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.perf_corpus import questions  # noqa: E402

TOKEN = "dapi-bench-0000"
ANSWER = ("Employees get 25 vacation days a year [1], and up to 5 unused days carry over [2]. "
          "Requests go through the HR portal two weeks ahead [1].")

from bench.perf_bench import BARE  # noqa: E402  (the same bare openai script as the official table)


def kb() -> list[str]:
    """The installed ``kb`` script; ``python -m agent.cli`` from the working directory with --module
    (to measure another checkout of the code, e.g. an exported HEAD)."""
    script = Path(sys.executable).with_name("kb")
    return [str(script)] if script.exists() and not MODULE else [sys.executable, "-m", "agent.cli"]


MODULE = "--module" in sys.argv


def env_for(index_dir: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("KB_", "DATABRICKS_", "BASE_URL", "OPENAI_", "LANGCHAIN_", "LANGSMITH_"))}
    if index_dir is not None:
        env["KB_INDEX_DIR"] = str(index_dir)
    env["KB_USAGE_LEDGER"] = "/tmp/st-bench-usage.sqlite"
    env.update(extra)
    return env


def wall(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - started


def first_byte(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first byte on the terminal, seconds to exit): stdout and stderr on a pty."""
    master, slave = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen(args, env={**env, "TERM": "xterm-256color", "COLUMNS": "100"}, stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    first = None
    while True:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            if first is None:
                first = time.perf_counter() - started
        elif proc.poll() is not None:
            break
    proc.wait()
    os.close(master)
    return (first if first is not None else float("nan")), time.perf_counter() - started


def med(values: list[float]) -> float:
    return statistics.median(values)


def fresh(index_dir: Path, repeat: int) -> None:
    from tests.databricks_stub import DatabricksStub, Reply

    qs = iter(questions(200, seed=41))
    search_env = env_for(index_dir)
    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER)
        ask_env = env_for(index_dir, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url, KB_MIN_RELEVANCE="0")
        wall([*kb(), "search", next(qs)], search_env)  # warm the page cache
        wall([*kb(), "ask", next(qs)], ask_env)
        body = Path(tempfile.mkdtemp(prefix="kb-startup-")) / "body.json"
        body.write_text(json.dumps(stub.chat_requests()[-1]), encoding="utf-8")
        bare = [sys.executable, "-c", BARE, stub.base_url, TOKEN, str(body)]
        wall(bare, env_for(None))
        rows: dict[str, list[float]] = {k: [] for k in ("search", "numpy", "ask", "bare", "first", "ask_tty")}
        for _ in range(repeat):
            rows["numpy"].append(wall([sys.executable, "-c", "import numpy"], env_for(None)))
            rows["search"].append(wall([*kb(), "search", next(qs)], search_env))
            rows["bare"].append(wall(bare, env_for(None)))
            rows["ask"].append(wall([*kb(), "ask", next(qs)], ask_env))
            first, total = first_byte([*kb(), "ask", next(qs)], ask_env)
            rows["first"].append(first)
            rows["ask_tty"].append(total)
    ratio_search = [s / n for s, n in zip(rows["search"], rows["numpy"])]
    ratio_ask = [a / b for a, b in zip(rows["ask"], rows["bare"])]
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"kb search fresh       {med(rows['search']):.3f} s   import numpy {med(rows['numpy']):.3f} s   "
          f"ratio p50 x{med(ratio_search):.2f} (target <= 5)")
    print(f"kb ask fresh (last)   {med(rows['ask']):.3f} s   bare openai  {med(rows['bare']):.3f} s   "
          f"ratio p50 x{med(ratio_ask):.2f} (target <= 1.6)")
    print(f"kb ask first byte     {med(rows['first']):.3f} s (on a terminal; target <= 0.3)   "
          f"whole run on a terminal {med(rows['ask_tty']):.3f} s")


def warm(index_dir: Path, count: int) -> None:
    import openai

    from agent.rag.retrieval import build_retriever
    from agent.rag.service import AnswerService
    from agent.settings import load_settings
    from tests.databricks_stub import DatabricksStub, Reply

    with DatabricksStub(token=TOKEN) as stub:
        stub.default_responder = lambda body: Reply(ANSWER, usage={"prompt_tokens": 900, "completion_tokens": 40})
        os.environ.update(env_for(index_dir, DATABRICKS_TOKEN=TOKEN, base_url=stub.base_url, KB_MIN_RELEVANCE="0"))
        settings = load_settings()
        retriever = build_retriever(settings, command="ask")
        service = AnswerService.from_settings(settings, command="ask", retriever=retriever)
        client = openai.OpenAI(base_url=stub.base_url, api_key=TOKEN, max_retries=0)

        def kb_question(q: str) -> tuple[float, float]:
            t0 = time.perf_counter()
            result = None
            for kind, value in service.stream(q):
                if kind == "done":
                    result = value
            assert result is not None and result.text == ANSWER, result
            return time.perf_counter() - t0, result.timing["retrieve"]

        def raw(body: dict) -> float:
            known = {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
            t0 = time.perf_counter()
            stream = client.chat.completions.create(**{k: v for k, v in body.items() if k in known},
                                                    extra_body={k: v for k, v in body.items() if k not in known})
            text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
            assert text == ANSWER
            return time.perf_counter() - t0

        qs = questions(count + 3, seed=21)
        for q in qs[:3]:
            kb_question(q)
            raw(stub.chat_requests()[-1])
        totals, retrievals, raws = [], [], []
        for q in qs[3:]:
            total, retrieval = kb_question(q)
            raws.append(raw(stub.chat_requests()[-1]))
            totals.append(total)
            retrievals.append(retrieval)
            stub.reset()
    over = [(t - r) * 1000 for t, r in zip(totals, raws)]
    relay = [(t - q - r) * 1000 for t, q, r in zip(totals, retrievals, raws)]
    print(f"warm kb ask overhead p50 {med(over):.1f} ms (target <= 15): retrieval {med(retrievals) * 1000:.1f} ms, "
          f"rest {med(relay):.1f} ms; raw call {med(raws) * 1000:.1f} ms")


def hybrid(index_dir: Path, count: int) -> None:
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings

    settings = load_settings(index_dir=index_dir)
    retriever = build_retriever(settings, mode="hybrid")
    qs = questions(count + 3, seed=9)
    for q in qs:
        retriever.invoke(q)  # warm-up, and the query vectors cached
    cached, live = [], []
    fresh_q = questions(count + 200, seed=10)[-count:]
    for q, other in zip(qs[3:], fresh_q):  # interleaved: the machine's load hits both alike
        t0 = time.perf_counter()
        retriever.invoke(q)
        cached.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        retriever.invoke(other + " now")
        live.append((time.perf_counter() - t0) * 1000)
    print(f"hybrid search p50 {med(cached):.1f} ms (min {min(cached):.1f}) without the query embedding, "
          f"{med(live):.1f} ms (min {min(live):.1f}) with it (target <= 25), {retriever.store.count()} chunks")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["fresh", "warm", "hybrid"])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--module", action="store_true", help="run python -m agent.cli (this checkout), not the kb script")
    args = parser.parse_args()
    {"fresh": lambda: fresh(args.index, args.repeat), "warm": lambda: warm(args.index, args.count),
     "hybrid": lambda: hybrid(args.index, args.count)}[args.what]()


if __name__ == "__main__":
    main()
