"""Load benchmark of ``kb serve``: N concurrent streaming clients against the loopback Databricks stub.

    python bench/load_bench.py                     # N = 1, 8, 32, 64; 15 s each; workers = CPU count
    python bench/load_bench.py --clients 64 --seconds 30 --workers 1

What runs, all on 127.0.0.1:
- the Databricks stub (tests/databricks_stub.py) in its own process, answering every chat request
  after a fixed 200 ms (``--delay``) with a streamed answer;
- ``kb serve`` as a real process (``--workers`` uvicorn workers) over an index of the test corpus;
- N clients (asyncio + httpx) each sending ``stream: true`` kb-rag requests back to back, each with
  a different question (so every request embeds its question and retrieves), reading to ``[DONE]``.

Printed per N: requests, errors, throughput, p50/p99 latency (request sent -> ``[DONE]``) and the
server's CPU time per request. The CPU cost per request measured at N=1 (server process time /
requests: no contention) gives the throughput the machine's cores could sustain if the server did
nothing but answer (``cores / cost``); the ratio of the throughput at N=64 to that ceiling is the
figure to watch (target: >= 70 %, with zero errors at 64).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "bench-key-2f8c61d0e94b7a35"
TOKEN = "dapi-bench-token-0000"
ANSWER = (
    "Full-time employees get 23 vacation days per year [1]. Up to 4 unused days carry over until "
    "April 30 [1]. Request time off in the Beehive portal at least 10 working days ahead [2]."
)
QUESTIONS = [
    "How many vacation days do I get",
    "Who approves expenses over 800 euros",
    "How do I connect to the VPN from Berlin",
    "What is the on-call acknowledgement time for a SEV1",
    "How do I roll back a deploy",
    "When is the helpdesk reachable",
    "How much is reimbursed for meals while travelling",
    "Do I need a doctor's note for sick leave",
]
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes


def run_stub(delay: float, ready: multiprocessing.Queue) -> None:
    """The Databricks stub in a process of its own (its CPU is not the server's nor the clients')."""
    import tests.databricks_stub as stub_module
    from tests.databricks_stub import DatabricksStub, Reply

    # The stub's socketserver listens with a backlog of 5: under 64 clients, connections beyond it
    # would be dropped and retried by TCP seconds later, which measures the stub, not kb serve.
    stub_module._Server.request_queue_size = 1024
    stub = DatabricksStub(token=TOKEN)
    stub.default_responder = lambda body: Reply(ANSWER, delay=delay, chunk_size=8,
                                                usage={"prompt_tokens": 600, "completion_tokens": 40})
    stub.start()
    ready.put(stub.base_url)
    while True:
        time.sleep(3600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (uvicorn workers are children)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


# ---------------------------------------------------------------- clients


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    stub_cpu: float = 0.0
    machine_util: float = 0.0
    other_cores: float = 0.0  # CPU used meanwhile by processes that are not part of the benchmark

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_request(client, url: str, question: str) -> tuple[float, str | None]:
    body = {"model": "kb-rag", "stream": True, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                return 0.0, f"{response.status_code}: {text[:200]}"
            done = False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith('data: {"error"'):
                    return 0.0, line[:200]
            if not done:
                return 0.0, "stream ended without [DONE]"
    except Exception as exc:  # a benchmark counts failures; it does not stop on them
        return 0.0, f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - started, None


async def run_level(base: str, clients: int, seconds: float, counter: list[int]) -> Level:
    import httpx

    level = Level(clients)
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                counter[0] += 1
                question = f"{QUESTIONS[counter[0] % len(QUESTIONS)]} (ticket {counter[0]})?"
                latency, error = await one_request(client, url, question)
                if error:
                    level.errors.append(error)
                else:
                    level.latencies.append(latency)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        level.seconds = time.perf_counter() - started
    return level


# ---------------------------------------------------------------- main


def build_index(index_dir: Path, env: dict[str, str]) -> None:
    from tests.corpus import write_corpus

    corpus = write_corpus(index_dir.parent / "corpus")
    subprocess.run([sys.executable, "-m", "agent.cli", "ingest", str(corpus)], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("kb serve exited during start-up")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("kb serve did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each level")
    parser.add_argument("--delay", type=float, default=0.2, help="the stub's fixed answer delay (s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="kb serve --workers")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    cores = os.cpu_count() or 1

    ready: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    stub = multiprocessing.get_context("spawn").Process(target=run_stub, args=(args.delay, ready), daemon=True)
    stub.start()
    base_url = ready.get(timeout=60)

    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DATABRICKS_", "KB_", "BASE_URL"))}
    env.update({"DATABRICKS_TOKEN": TOKEN, "base_url": base_url, "KB_INDEX_DIR": str(work / "index"),
                "KB_API_KEYS": f"bench:{KEY}", "KB_MAX_RETRIES": "0", "KB_TIMEOUT": "60"})
    print(f"indexing the test corpus into {work / 'index'} ...", file=sys.stderr)
    build_index(work / "index", env)

    port = free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--port", str(port), "--workers", str(args.workers),
         "--log-level", "warning"],
        env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    results: list[Level] = []
    try:
        wait_ready(base, server)
        counter = [0]
        asyncio.run(run_level(base, 8, 5.0, counter))  # warm-up: every worker, caches, connections
        for clients in levels:
            cpu0, bench0, stub0, busy0 = cpu_seconds(server.pid), time.process_time(), cpu_seconds(stub.pid), machine_busy()
            level = asyncio.run(run_level(base, clients, args.seconds, counter))
            busy1 = machine_busy()
            level.server_cpu = cpu_seconds(server.pid) - cpu0
            level.bench_cpu = time.process_time() - bench0
            level.stub_cpu = cpu_seconds(stub.pid) - stub0
            level.machine_util = (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])
            ours = level.server_cpu + level.bench_cpu + level.stub_cpu
            level.other_cores = max(0.0, (busy1[0] - busy0[0]) / TICK - ours) / level.seconds
            results.append(level)
            print(f"  N={clients:>3}: {level.requests} requests, {len(level.errors)} errors, "
                  f"{level.throughput:.1f} req/s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        stub.terminate()
        log.close()

    report(results, cores, args)
    return 0 if results and not results[-1].errors else 1


def report(results: list[Level], cores: int, args: argparse.Namespace) -> None:
    base = results[0]
    cost = base.server_cpu / base.requests if base.requests else float("nan")
    ceiling = cores / cost if cost else float("nan")
    last = results[-1]
    ratio = last.throughput / ceiling if ceiling else float("nan")
    rows = []
    for level in results:
        rows.append({
            "clients": level.clients, "requests": level.requests, "errors": len(level.errors),
            "throughput_rps": round(level.throughput, 1),
            "p50_ms": round(level.percentile(0.50) * 1000), "p99_ms": round(level.percentile(0.99) * 1000),
            "server_cpu_ms_per_request": round(1000 * level.server_cpu / max(1, level.requests), 1),
            "bench_cpu_ms_per_request": round(1000 * level.bench_cpu / max(1, level.requests), 1),
            "stub_cpu_ms_per_request": round(1000 * level.stub_cpu / max(1, level.requests), 1),
            "machine_cpu_util": round(level.machine_util, 2),
            "other_processes_cores": round(level.other_cores, 2),
        })
    summary = {
        "cores": cores, "workers": args.workers, "stub_delay_ms": round(args.delay * 1000),
        "seconds_per_level": args.seconds,
        "cpu_ms_per_request_at_1": round(cost * 1000, 2), "ceiling_rps": round(ceiling, 1),
        "throughput_at_max_rps": round(last.throughput, 1), "ratio": round(ratio, 3),
        "errors_at_max": len(last.errors), "target": "ratio >= 0.70 and zero errors at 64",
        "other_processes_cores_at_max": round(last.other_cores, 2),
        "ratio_to_cpu_left": round(last.throughput / ((cores - last.other_cores) / cost), 3) if cost else None,
    }
    if args.as_json:
        print(json.dumps({"levels": rows, "summary": summary}, indent=2))
        return
    print(f"\nkb serve load benchmark: stub answers after {summary['stub_delay_ms']} ms, "
          f"{args.workers} worker(s), {cores} cores, {args.seconds:.0f} s per level\n")
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'server CPU ms/req':>17} {'client ms/req':>13} {'stub ms/req':>11} {'machine CPU':>11} {'other procs':>11}")
    for row in rows:
        print(f"{row['clients']:>7} {row['requests']:>8} {row['errors']:>6} {row['throughput_rps']:>7} "
              f"{row['p50_ms']:>7} {row['p99_ms']:>7} {row['server_cpu_ms_per_request']:>17} "
              f"{row['bench_cpu_ms_per_request']:>13} {row['stub_cpu_ms_per_request']:>11} "
              f"{row['machine_cpu_util'] * 100:>10.0f}% {row['other_processes_cores']:>7.2f} cpu")
    print(f"\nserver CPU per request at N={base.clients}: {cost * 1000:.1f} ms -> ceiling on {cores} cores: "
          f"{ceiling:.1f} req/s")
    print(f"throughput at N={last.clients}: {last.throughput:.1f} req/s = {ratio * 100:.0f}% of the ceiling "
          f"(target >= 70%); errors at N={last.clients}: {len(last.errors)}")
    if last.other_cores >= 0.1:
        print(f"other processes used {last.other_cores:.2f} cores meanwhile: on the {cores - last.other_cores:.2f} "
              f"cores left, the ceiling is {(cores - last.other_cores) / cost:.1f} req/s and the ratio "
              f"{summary['ratio_to_cpu_left'] * 100:.0f}%")
    for error in sorted(set(last.errors))[:5]:
        print(f"  error: {error}")


if __name__ == "__main__":
    raise SystemExit(main())
