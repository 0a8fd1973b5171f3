"""What access control costs a search: p50 latency with and without a group filter, measured in one run.

    python -m bench.access_bench                      # 10k and 50k chunks (50k builds once: ~3-4 min)
    python -m bench.access_bench --sizes 10000 --queries 20

It builds (once, under ``--cache``, default ``.bench/``) synthetic indexes shaped like
bench/perf_corpus.py's (the same topics, texts and clustered vectors) whose chunks are labelled in
thirds: ``access: ["*"]`` (everyone), ``["hr"]``, ``["legal"]``. Then, through the real retriever
(``agent.rag.retrieval.build_retriever``: the query snapshot, as ``kb search`` / ``kb serve`` use it),
for dense, bm25 and hybrid it times the same questions three ways, interleaved:

- unfiltered (``groups=None``: the CLI without ``--as-groups``);
- a caller in ``hr`` (reads ``*`` + ``hr``: two thirds of the chunks);
- a caller without groups (reads ``*``: one third).

Query vectors are computed once per question before timing (the retriever caches them), so the
numbers are the search itself. The first query of each group set, which builds the snapshot's set
of readable chunks, is timed apart ("first filtered query"). Nothing here asserts, except that no
filtered result is a chunk the caller may not read. Not run by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/access_bench.py` works too
    sys.path.insert(0, str(REPO))

from bench.perf_corpus import build_index, questions  # noqa: E402

FORMAT = 1  # bump when the labelled corpus changes: cached indexes are rebuilt
LABELS = (["*"], ["hr"], ["legal"])
CALLERS = {"hr": frozenset({"hr"}), "public": frozenset()}
MODES = ("dense", "bm25", "hybrid")


def build_labelled_index(cache: Path, size: int, *, log=print) -> Path:
    """``size`` chunks like bench/perf_corpus.py's, a third each readable by everyone, hr, legal."""
    return build_index(cache, size, log=log, name="access-index", marker_extra={"format_access": FORMAT, "labels": LABELS},
                       doc_metadata=lambda doc: {"access": LABELS[doc % 3], "access_labelled": True})


def _ms(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def measure(index_dir: Path, count: int) -> tuple[str, dict[str, float], list[dict]]:
    from agent.rag.retrieval import build_retriever
    from agent.settings import load_settings
    from ingest.access import readable_by

    retriever = build_retriever(load_settings(index_dir=index_dir), k=5)
    kind = type(retriever.store).__name__
    qs = questions(count + 3, seed=5)
    for q in qs:  # query vectors once (cached by the retriever), and the unfiltered paths warm
        retriever.invoke(q, mode="dense")
    # The first query of a group set builds the snapshot's set of chunks it may read (kept per snapshot).
    first = {name: _ms(lambda g=groups: retriever.invoke(qs[0], mode="dense", groups=g)) for name, groups in CALLERS.items()}
    rows = []
    for mode in MODES:
        for q in qs[1:3]:
            retriever.invoke(q, mode=mode)
        times: dict[str, list[float]] = {"all": [], **{name: [] for name in CALLERS}}
        leaks = 0
        for i, q in enumerate(qs[3:]):
            order = ["all", *CALLERS] if i % 2 == 0 else [*reversed(CALLERS), "all"]
            for name in order:
                groups = CALLERS.get(name)
                box: list = []
                times[name].append(_ms(lambda: box.extend(retriever.invoke(q, mode=mode, groups=groups))))
                allowed = readable_by(groups)
                if allowed is not None:
                    leaks += sum(1 for d in box if not set(d.metadata.get("access") or []) & allowed)
        row = {"mode": mode, **{name: statistics.median(v) for name, v in times.items()}, "leaks": leaks,
               "n": len(qs) - 3}
        rows.append(row)
    return kind, first, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=40, help="timed questions per mode and caller")
    parser.add_argument("--cache", default=str(REPO / ".bench"), help="where the synthetic indexes are kept")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    import os

    print(f"access bench: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.queries} questions per cell",
          flush=True)
    results = []
    for size in sizes:
        index_dir = build_labelled_index(Path(args.cache), size)
        kind, first, rows = measure(index_dir, args.queries)
        results.append((size, kind, first, rows))
        print(f"  {size // 1000}k measured ({kind})", flush=True)
    lines = ["| chunks | mode | unfiltered p50 | hr caller (2/3 readable) p50 | ratio | public caller (1/3) p50 | ratio |",
             "|---|---|---|---|---|---|---|"]
    for size, kind, _, rows in results:
        for row in rows:
            lines.append(f"| {size // 1000}k | {row['mode']} | {row['all']:.1f} ms | {row['hr']:.1f} ms | "
                         f"{row['hr'] / row['all']:.2f} | {row['public']:.1f} ms | {row['public'] / row['all']:.2f} |")
    print()
    print("\n".join(lines))
    print()
    for size, _, first, _ in results:
        print(f"first query of a new group set at {size // 1000}k (builds its readable chunks once per snapshot): "
              + ", ".join(f"{name} {ms:.0f} ms" for name, ms in first.items()))
    leaks = sum(row["leaks"] for _, _, _, rows in results for row in rows)
    kinds = sorted({kind for _, kind, _, _ in results})
    print(f"\nstore: {', '.join(kinds)}; k=5; p50 of {args.queries} questions each, interleaved; "
          f"query vectors precomputed; unreadable chunks returned to a filtered caller: {leaks}")
    return 1 if leaks else 0


if __name__ == "__main__":
    raise SystemExit(main())
