"""``kb eval --compare``: two configurations on the same gold set, and what changed between them.

A configuration is named by the settings it changes, typed like the environment::

    kb eval gold.jsonl --compare KB_SEARCH_MODE=bm25
    kb eval gold.jsonl --compare KB_FUSION=rrf --compare KB_RRF_K=20
    kb eval gold.jsonl --baseline KB_INDEX_DIR=.kb-old --compare KB_INDEX_DIR=.kb-new

The baseline is the current settings (plus any ``--baseline KEY=VALUE``); the variant is the current
settings plus every ``--compare KEY=VALUE``. Both are validated by the settings object
(``agent.settings.parse_overrides``/``settings_with``): an unknown or secret key, or a bad value, is
one error line. Each side runs retrieval in its own ``KB_SEARCH_MODE`` on its own index
(``KB_INDEX_DIR``, so a variant that needs another ingest points at it), reranked when its
``KB_RERANK`` says so; only then is a Databricks endpoint needed.

``compare_runs`` is the pure diff: per metric overall and per question kind (variant - baseline),
and the questions whose outcome changed: the rank of the first gold page before -> after
(``None``: not in the top 10), or for an unanswerable question whether the relevance gate declines it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.evaluation.evaluate import (
    EVAL_K,
    ModeResult,
    declines,
    load_gold,
    measure_retrieval,
    metrics_by_kind,
    retrieval_settings,
)
from agent.evaluation.metrics import METRICS

KIND_METRICS = ("hit@5", "MRR", "nDCG@10")


def first_gold_rank(row: dict[str, Any]) -> int | None:
    """The rank of the first chunk of any gold page (``None``: none in the top 10)."""
    ranks = list((row.get("found_at") or {}).values())
    return min(ranks) if ranks else None


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 4)


def compare_runs(
    baseline: Sequence[dict[str, Any]], variant: Sequence[dict[str, Any]], *, floors: tuple[float, float] = (0.0, 0.0)
) -> dict[str, Any]:
    """The difference between two runs' per-question rows (``evaluate_retrieval`` rows, same questions)."""
    before_kinds = metrics_by_kind(baseline, floors[0])
    after_kinds = metrics_by_kind(variant, floors[1])
    overall_before = before_kinds["overall"]["metrics"] or {}
    overall_after = after_kinds["overall"]["metrics"] or {}
    metrics = {
        name: {"baseline": overall_before.get(name), "variant": overall_after.get(name),
               "delta": _delta(overall_before.get(name), overall_after.get(name))}
        for name in METRICS
    }
    kinds: dict[str, Any] = {}
    for kind in dict.fromkeys([*before_kinds, *after_kinds]):
        b, a = before_kinds.get(kind, {}), after_kinds.get(kind, {})
        entry: dict[str, Any] = {"questions": b.get("questions", a.get("questions", 0))}
        for name in KIND_METRICS:
            bv = (b.get("metrics") or {}).get(name)
            av = (a.get("metrics") or {}).get(name)
            entry[name] = {"baseline": bv, "variant": av, "delta": _delta(bv, av)}
        for name in ("refused", "declined"):
            entry[name] = {"baseline": b.get(name), "variant": a.get(name), "delta": _delta(b.get(name), a.get(name))}
        kinds[kind] = entry
    after_by_id = {row["id"]: row for row in variant}
    changed = []
    for row in baseline:
        other = after_by_id.get(row["id"])
        if other is None:
            continue
        if row["sources"]:
            before, after = first_gold_rank(row), first_gold_rank(other)
            if before != after:
                better = after is not None and (before is None or after < before)
                changed.append({"id": row["id"], "kind": row.get("kind"), "question": row["question"],
                                "before": before, "after": after, "better": better})
        else:
            before_d = declines(row.get("relevance"), floors[0])
            after_d = declines(other.get("relevance"), floors[1])
            if before_d != after_d:
                changed.append({"id": row["id"], "kind": row.get("kind"), "question": row["question"],
                                "before": "declined" if before_d else "answered",
                                "after": "declined" if after_d else "answered", "better": after_d})
    return {"metrics": metrics, "by_kind": kinds, "changed": changed}


def run_side(settings: Any, questions: Sequence[Any], on_question: Callable[[int, int], None] | None
             ) -> tuple[ModeResult, list[str]]:
    """One side in its own search mode: its results and the gold sources its index lacks."""
    mode = settings.search_mode
    _, results, unknown = measure_retrieval(settings, questions, [mode], primary=mode, on_question=on_question)
    return results[mode], unknown


def run_compare(
    baseline: Any,
    variant: Any,
    gold: Path,
    *,
    labels: tuple[str, str] = ("current settings", "variant"),
    on_question: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Both sides on the gold set; the report of ``kb eval --compare`` (``--json`` prints it)."""
    from agent.rag.retrieval import min_relevance

    questions = load_gold(gold)
    total = 2 * len(questions)

    def progress(offset: int) -> Callable[[int, int], None] | None:
        if on_question is None:
            return None
        return lambda done, _: on_question(offset + done, total)

    before, unknown_before = run_side(baseline, questions, progress(0))
    after, unknown_after = run_side(variant, questions, progress(len(questions)))
    floors = (min_relevance(baseline), min_relevance(variant))
    diff = compare_runs(before.rows, after.rows, floors=floors)
    answerable = sum(1 for q in questions if q.answerable)
    return {
        "gold": str(gold),
        "questions": len(questions),
        "answerable": answerable,
        "unanswerable": len(questions) - answerable,
        "k": EVAL_K,
        "baseline": {"label": labels[0], "settings": retrieval_settings(baseline), "per_question": before.rows,
                     "unknown_sources": unknown_before},
        "variant": {"label": labels[1], "settings": retrieval_settings(variant), "per_question": after.rows,
                    "unknown_sources": unknown_after},
        **diff,
    }
