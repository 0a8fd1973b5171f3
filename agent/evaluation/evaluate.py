"""``kb eval``: measure retrieval (and optionally answers) against a gold set.

A gold set is JSON Lines, one question per line::

    {"id": "pto-1", "question": "How many vacation days do I get?", "sources": ["hr/pto.md"], "answer": "21 days a year ..."}

``sources`` are paths relative to the ingested folder, exactly as ``kb search`` shows them; an empty
list means the corpus does not answer the question. Retrieval metrics (``agent.evaluation.metrics``) are
averaged over the answerable questions for each mode; unanswerable ones calibrate the relevance
floor that makes ``kb ask`` decline. With ``--answers`` every question is also answered by the
configured model and graded by it (``JUDGE_*`` prompts), all calls tagged ``"command": "eval"``.

The gold file is untrusted input: its size, its line length and its JSON nesting are bounded
(``too_deep`` is a hand-written linear scan because the standard library has no depth limit and
its parser fails on deep nesting only by exhausting the recursion limit).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, KbError, UsageError
from agent.evaluation.metrics import METRICS, canonical_metric, documents, first_ranks, mean_metrics, question_metrics
from agent.evaluation.report import report_json
from agent.rag.failures import translate_failures
from agent.rag.prompts import JUDGE_ANSWER_PROMPT, JUDGE_DECLINE_PROMPT, escape_untrusted, format_passages
from agent.rag.rerank import build_reranker, retrieve
from agent.rag.retrieval import MODES, best_relevance, build_retriever, min_relevance
from agent.rag.service import AnswerService
from agent.usage.tokens import collect_usage
from ingest.access import readable_by
from ingest.store.base import Filter, indexed_sources

ANSWER_METRICS = ("correct", "answer_score", "grounded", "declined")
EVAL_K = 10
MAX_GOLD_BYTES = 64 * 1024 * 1024  # a gold file is a few hundred questions; this is far beyond
MAX_GOLD_LINE = 1024 * 1024  # one question per line
MAX_JSON_DEPTH = 32  # a gold line is an object of strings and a list of strings: depth 2


def too_deep(text: str, limit: int) -> bool:
    """True when ``text``'s JSON arrays and objects nest more than ``limit`` deep (brackets inside
    strings do not count). Linear, no recursion: checked before ``json.loads``, whose recursion a
    line of 100,000 ``[`` would exhaust."""
    if text.count("[") + text.count("{") <= limit:  # the usual case, at C speed
        return False
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def loads_bounded(text: str, *, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for JSON a user gave the CLI: too deep or malformed is a ``UsageError``."""
    if too_deep(text, max_depth):
        raise UsageError(f"{where}: JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # pragma: no cover (the depth check comes first)
        raise UsageError(f"{where}: JSON nested too deeply") from None


class EvalThresholdError(KbError):
    """A ``--fail-under`` floor was missed."""

    exit_code = 1


KINDS = ("lookup", "paraphrase", "multi", "unanswerable")
UNSPECIFIED = "unspecified"
# Id prefixes of the bundled gold sets (eval/*.jsonl), for records without a "kind".
# (A question without sources is unanswerable whatever its id says: no prefix needed for that kind.)
_KIND_PREFIXES = (("h-direct", "lookup"), ("direct", "lookup"), ("h-para", "paraphrase"), ("para", "paraphrase"),
                  ("h-multi", "multi"), ("multi", "multi"), ("lookup", "lookup"))


def question_kind(kind: Any, qid: str, sources: Sequence[str]) -> str:
    """The record's ``kind``; without one, the kind its id prefix names; a question without
    sources is ``unanswerable`` whatever it says; else ``unspecified``."""
    if not sources:
        return "unanswerable"
    if isinstance(kind, str) and kind.strip():
        return kind.strip().lower()[:40]
    lowered = qid.lower()
    for prefix, name in _KIND_PREFIXES:
        if lowered.startswith(prefix):
            return name
    return UNSPECIFIED


@dataclass(frozen=True)
class GoldQuestion:
    id: str
    question: str
    sources: tuple[str, ...]
    answer: str = ""
    kind: str = UNSPECIFIED

    @property
    def answerable(self) -> bool:
        return bool(self.sources)


def load_gold(path: Path) -> list[GoldQuestion]:
    """Read and check a gold file; any problem is a ``UsageError`` naming the line."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_GOLD_BYTES + 1)  # never more, also from a pipe or /dev/zero
        if len(data) > MAX_GOLD_BYTES:
            raise UsageError(f"gold file {path} is larger than {MAX_GOLD_BYTES // (1024 * 1024)} MB")
        lines = data.decode("utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"no such gold file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"gold file {path} is a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read gold file {path}: {exc}") from None
    questions: list[GoldQuestion] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        where = f"{path} line {number}"
        if len(line) > MAX_GOLD_LINE:
            raise UsageError(f"{where}: longer than {MAX_GOLD_LINE // 1024} KB")
        row = loads_bounded(line, where=where)
        if not isinstance(row, dict):
            raise UsageError(f"{where}: expected a JSON object")
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UsageError(f"{where}: 'question' must be a non-empty string")
        sources = row.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) and s.strip() for s in sources):
            raise UsageError(f"{where}: 'sources' must be a list of paths (empty if the corpus does not answer it)")
        answer = row.get("answer", "")
        if not isinstance(answer, str):
            raise UsageError(f"{where}: 'answer' must be a string")
        qid = str(row.get("id", f"line-{number}"))
        if qid in seen:
            raise UsageError(f"{where}: duplicate id '{qid}'")
        seen.add(qid)
        normalised = tuple(dict.fromkeys(s.strip().replace("\\", "/").removeprefix("./") for s in sources))
        kind = row.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise UsageError(f"{where}: 'kind' must be a string ({', '.join(KINDS)})")
        if kind and kind.strip().lower() == "unanswerable" and normalised:
            raise UsageError(f"{where}: kind 'unanswerable' but 'sources' is not empty")
        questions.append(GoldQuestion(qid, question.strip(), normalised, answer.strip(),
                                      question_kind(kind, qid, normalised)))
    if not questions:
        raise UsageError(f"{path} has no questions")
    return questions


# ---------------------------------------------------------------- retrieval


@dataclass
class ModeResult:
    mode: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per question

    @property
    def metrics(self) -> dict[str, float]:
        return mean_metrics([r["metrics"] for r in self.rows if r["sources"]])

    def misses(self, n: int = 5) -> list[dict[str, Any]]:
        """Answerable questions with no gold source in the top n."""
        out = []
        for row in self.rows:
            if row["sources"] and row["metrics"][f"hit@{n}"] == 0:
                out.append(
                    {
                        "id": row["id"],
                        "question": row["question"],
                        "expected": row["sources"],
                        "found_at": row["found_at"],
                        "retrieved": row["retrieved"][:n],
                    }
                )
        return out


def evaluate_retrieval(
    retriever: Any,
    questions: Sequence[GoldQuestion],
    modes: Sequence[str],
    *,
    top_k: int = 5,
    on_question: Callable[[int, int], None] | None = None,
    reranker: Any = None,
    candidates: int = 20,
) -> dict[str, ModeResult]:
    """Run every question in every mode and rank its top 10 documents (pages).

    The page ranking is the retriever's own, asked for one chunk per page (``max_per_source=1``:
    the order of pages is the one ``kb ask`` ranks by, without the cap that lets a page take up to
    three of the top-k chunks); with a ``reranker``, the pages in the order of the reranked top
    ``candidates`` chunks, as ``kb ask`` reranks them, then (when those hold fewer than 10 pages)
    the first stage's next pages. ``relevance`` is the best cosine among the top ``top_k`` chunks
    that ``kb ask`` would get (what its refusal gate reads)."""

    results = {mode: ModeResult(mode) for mode in modes}
    for done, question in enumerate(questions, 1):
        for mode in modes:
            pages = retriever.invoke(question.question, k=EVAL_K, mode=mode, max_per_source=1)
            if reranker is None:
                gate = retriever.invoke(question.question, k=top_k, mode=mode)
            else:
                pool = max(candidates, EVAL_K)
                reranked = retrieve(retriever, reranker, question.question, k=pool, candidates=pool, mode=mode)
                gate, pages = reranked[:top_k], [*reranked, *pages]
            ranked = documents([d.metadata.get("source") for d in pages])[:EVAL_K]
            results[mode].rows.append(
                {
                    "id": question.id,
                    "kind": question.kind,
                    "question": question.question,
                    "sources": list(question.sources),
                    "retrieved": ranked,
                    "found_at": first_ranks(ranked, question.sources),
                    "metrics": question_metrics(ranked, question.sources) if question.sources else None,
                    "relevance": best_relevance(gate),
                }
            )
        if on_question:
            on_question(done, len(questions))
    return results


def relevance_summary(result: ModeResult, floor: float) -> dict[str, Any]:
    """How the refusal floor separates answerable from unanswerable questions, and a suggested floor."""
    answerable = [r["relevance"] or 0.0 for r in result.rows if r["sources"]]
    unanswerable = [r["relevance"] or 0.0 for r in result.rows if not r["sources"]]

    def refused(values: list[float], threshold: float) -> int:
        return sum(1 for v in values if v < threshold) if threshold > 0 else 0

    summary: dict[str, Any] = {
        "mode": result.mode,
        "floor": floor,
        "answerable": _spread(answerable),
        "unanswerable": _spread(unanswerable),
        "declined_unanswerable": refused(unanswerable, floor),
        "refused_answerable": refused(answerable, floor),
        "unanswerable_count": len(unanswerable),
        "answerable_count": len(answerable),
    }
    if answerable and unanswerable:
        # The highest floor that refuses no answerable question, midway to the next value below,
        # so that a paraphrase slightly further away is not refused either.
        lowest = min(answerable)
        below = [v for v in unanswerable if v < lowest]
        best = round((max(below) + lowest) / 2 if below else lowest * 0.9, 3)
        summary["suggested_floor"] = best
        summary["suggested_declines"] = refused(unanswerable, best)
        summary["suggested_refusals"] = refused(answerable, best)
    return summary


# The settings that shape retrieval, by env name: what a report says it measured.
RETRIEVAL_SETTINGS = ("KB_SEARCH_MODE", "KB_FUSION", "KB_FUSION_ALPHA", "KB_RRF_K", "KB_RRF_BM25_WEIGHT",
                      "KB_PAGE_SUPPORT", "KB_PAGE_SUPPORT_CHUNKS", "KB_MAX_PER_SOURCE", "KB_RERANK", "KB_RERANK_CANDIDATES", "KB_EMBEDDINGS", "KB_INDEX_DIR",
                      "KB_MIN_RELEVANCE", "KB_TOP_K")


def retrieval_settings(settings: Any) -> dict[str, str | None]:
    """``RETRIEVAL_SETTINGS`` as strings (``None``: unset)."""
    from agent.settings import ENV_NAMES

    by_env = {env: name for name, env in ENV_NAMES.items()}
    values = {env: getattr(settings, by_env[env], None) for env in RETRIEVAL_SETTINGS if env in by_env}
    return {env: None if value is None else str(value) for env, value in values.items()}


def declines(relevance: float | None, floor: float) -> bool:
    """Whether ``kb ask``'s relevance gate declines a question whose best cosine is ``relevance``
    (``agent.rag.retrieval.refusal``: nothing retrieved, or below a positive floor)."""
    return relevance is None or (floor > 0 and relevance < floor)


def metrics_by_kind(rows: Sequence[dict[str, Any]], floor: float) -> dict[str, dict[str, Any]]:
    """Per question kind, then ``overall``: the retrieval metrics over its answerable questions and
    ``refused`` (the relevance gate declines an answerable one: wrong), and for unanswerable
    questions ``declined`` (the gate declines: right). Rates are ``None`` where a kind has no such question."""
    kinds = list(dict.fromkeys([*(k for k in KINDS if any(r.get("kind") == k for r in rows)),
                                *(str(r.get("kind") or UNSPECIFIED) for r in rows)]))
    out: dict[str, dict[str, Any]] = {}
    for kind in [*kinds, "overall"]:
        mine = [r for r in rows if kind == "overall" or (r.get("kind") or UNSPECIFIED) == kind]
        answerable = [r for r in mine if r["sources"]]
        unanswerable = [r for r in mine if not r["sources"]]
        entry: dict[str, Any] = {"questions": len(mine), "answerable": len(answerable)}
        if answerable:
            entry["metrics"] = {name: round(value, 4) for name, value in mean_metrics([r["metrics"] for r in answerable]).items()}
            entry["refused"] = round(sum(declines(r.get("relevance"), floor) for r in answerable) / len(answerable), 4)
        else:
            entry["metrics"] = None
            entry["refused"] = None
        entry["declined"] = (round(sum(declines(r.get("relevance"), floor) for r in unanswerable) / len(unanswerable), 4)
                             if unanswerable else None)
        out[kind] = entry
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def unknown_sources(questions: Sequence[GoldQuestion], indexed: set[str]) -> list[str]:
    """Gold sources that are not in the index (a typo, or a folder that was not ingested)."""
    return sorted({s for q in questions for s in q.sources if s not in indexed})


def targets(results: dict[str, ModeResult]) -> list[dict[str, Any]]:
    """The issue's targets: hybrid at least as good as the better single mode on nDCG@10 and hit@5,
    and hybrid hit@5 >= 0.9 on answerable questions. Empty unless all three modes ran."""
    if not {"dense", "bm25", "hybrid"} <= set(results):
        return []
    hybrid = results["hybrid"].metrics
    dense, bm25 = results["dense"].metrics, results["bm25"].metrics
    checks = []
    for metric in ("nDCG@10", "hit@5"):
        best = max(dense[metric], bm25[metric])
        checks.append(
            {"target": f"hybrid {metric} >= best single mode", "value": hybrid[metric], "against": best,
             "ok": hybrid[metric] >= best - 1e-9}
        )
    checks.append({"target": "hybrid hit@5 >= 0.9", "value": hybrid["hit@5"], "against": 0.9, "ok": hybrid["hit@5"] >= 0.9})
    return checks


# ---------------------------------------------------------------- answers


def parse_judgement(text: str) -> dict[str, Any] | None:
    """The JSON object in a judge's reply (tolerates code fences and surrounding words)."""
    # From the first "{" to the last "}" (what a greedy r"\{.*\}" finds, without its quadratic
    # search over a reply full of "{").
    text = text or ""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    candidate = text[start:end + 1]
    if too_deep(candidate, MAX_JSON_DEPTH):
        return None
    try:
        value = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _verdict(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if text.startswith("partial"):
        return "partially"
    if text in ("correct", "right"):
        return "correct"
    if text in ("wrong", "incorrect"):
        return "wrong"
    return None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    return None


def evaluate_answers(
    settings: Any,
    questions: Sequence[GoldQuestion],
    *,
    mode: str,
    retriever: Any = None,
    llm: Any = None,
    judge: Any = None,
    on_question: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Answer every question through the answer service, as ``kb ask`` does (same retrieval, refusal
    and prompt), and grade it. ``usage`` counts every model call: the answers and the judge's."""
    from langchain_core.output_parsers import StrOutputParser

    from agent.databricks.llm import build_llm  # heavy: langchain_openai + openai, needed only with --answers

    service = AnswerService.from_settings(
        settings, command="eval", llm=llm, retriever=retriever, mode=mode, usage_extra={"eval_step": "answer"}
    )
    judge = judge or build_llm(settings, command="eval", usage_extra={"eval_step": "judge"})
    grade_answer = JUDGE_ANSWER_PROMPT | judge | StrOutputParser()
    grade_decline = JUDGE_DECLINE_PROMPT | judge | StrOutputParser()
    rows: list[dict[str, Any]] = []
    with collect_usage() as usage:  # answers and judging; "unknown" unless every call reported usage
        for done, q in enumerate(questions, 1):
            answer = service.run(q.question, mode=mode)
            row: dict[str, Any] = {"id": q.id, "kind": q.kind, "question": q.question, "sources": list(q.sources),
                                   "answer": answer.text, "refused": answer.refused, "cited": answer.sources}
            answer_text = escape_untrusted(answer.text)
            with translate_failures(endpoint=settings.chat_endpoint, base_url=settings.serving_base_url):
                if q.answerable:
                    if answer.refused:
                        row.update(verdict="wrong", grounded=None, declined=True, reason="refused: below the relevance floor")
                    else:
                        reply = grade_answer.invoke(
                            {
                                "question": escape_untrusted(q.question),
                                "reference": escape_untrusted(q.answer or "(none given)"),
                                "passages": format_passages(answer.passages),
                                "answer": answer_text,
                            }
                        )
                        judged = parse_judgement(reply) or {}
                        declined = bool(_flag(judged.get("declined")))
                        grounded = _flag(judged.get("grounded"))
                        if not answer.citations and not declined:
                            grounded = False  # nothing cited: nothing can ground it
                        row.update(
                            verdict=_verdict(judged.get("verdict")) or "unjudged",
                            grounded=None if declined else grounded,
                            declined=declined,
                            reason=str(judged.get("reason") or ("judge reply was not JSON" if not judged else "")),
                        )
                else:
                    if answer.refused:
                        row.update(declined=True, reason="refused: below the relevance floor")
                    else:
                        reply = grade_decline.invoke({"question": escape_untrusted(q.question), "answer": answer_text})
                        judged = parse_judgement(reply) or {}
                        declined = _flag(judged.get("declined"))
                        row.update(
                            declined=bool(declined),
                            unjudged=declined is None,
                            reason=str(judged.get("reason") or ("judge reply was not JSON" if not judged else "")),
                        )
            rows.append(row)
            if on_question:
                on_question(done, len(questions))
        tokens = usage.totals()
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    return {"mode": mode, "floor": min_relevance(settings), "metrics": answer_metrics(rows),
            "by_kind": {kind: answer_metrics([r for r in rows if r["kind"] == kind]) for kind in kinds},
            "usage": tokens, "questions": rows}


def answer_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates over the questions the judge's reply could be read for; ``None`` (n/a) when there are
    none, never a 0.0 that reads as "all wrong". ``unjudged`` counts the unreadable replies."""
    answerable = [r for r in rows if r["sources"]]
    unanswerable = [r for r in rows if not r["sources"]]
    verdicts = [r.get("verdict") for r in answerable if r.get("verdict") != "unjudged"]
    answered = [r for r in answerable if not r.get("declined")]
    grounded = [r for r in answered if r.get("grounded") is not None]
    judged_declines = [r for r in unanswerable if not r.get("unjudged")]
    n = len(verdicts)

    def rate(count: float, total: int) -> float | None:
        return count / total if total else None

    return {
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "correct": rate(verdicts.count("correct"), n),
        "partially": rate(verdicts.count("partially"), n),
        "wrong": rate(verdicts.count("wrong"), n),
        "unjudged": len(answerable) - n + (len(unanswerable) - len(judged_declines)),
        "answer_score": rate(verdicts.count("correct") + 0.5 * verdicts.count("partially"), n),
        "grounded": rate(sum(1 for r in grounded if r["grounded"]), len(grounded)),
        "declined": rate(sum(1 for r in judged_declines if r.get("declined")), len(judged_declines)),
        "false_refusals": sum(1 for r in answerable if r.get("declined")),
    }


# ---------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Threshold:
    metric: str
    value: float
    mode: str | None  # None: the primary mode (retrieval) / the answers run

    def label(self, primary: str) -> str:
        if self.metric in ANSWER_METRICS:
            return f"answers {self.metric}"
        return f"{self.mode or primary} {self.metric}"


def parse_threshold(spec: str, modes: Sequence[str]) -> Threshold:
    """``nDCG@10=0.8``, ``hybrid:hit@5=0.9`` or ``grounded=0.9`` -> ``Threshold``."""
    text = spec.strip()
    name, sep, raw = text.partition("=")
    if not sep:
        raise UsageError(f"--fail-under '{spec}': expected METRIC=VALUE, e.g. nDCG@10=0.8")
    mode = None
    if ":" in name:
        mode, _, name = name.partition(":")
        mode = mode.strip().lower()
        if mode not in modes:
            raise UsageError(f"--fail-under '{spec}': mode '{mode}' is not evaluated (modes: {', '.join(modes)})")
    metric = canonical_metric(name, METRICS + ANSWER_METRICS)
    if metric is None:
        raise UsageError(
            f"--fail-under '{spec}': unknown metric '{name.strip()}' (one of {', '.join(METRICS + ANSWER_METRICS)})"
        )
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--fail-under '{spec}': '{raw}' is not a number") from None
    if not 0 <= value <= 1:
        raise UsageError(f"--fail-under '{spec}': metrics are between 0 and 1")
    return Threshold(metric, value, mode)


def check_thresholds(
    thresholds: Sequence[Threshold],
    results: dict[str, ModeResult],
    primary: str,
    answers: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    checks = []
    for threshold in thresholds:
        if threshold.metric in ANSWER_METRICS:
            if answers is None:
                raise UsageError(f"--fail-under {threshold.metric} needs --answers")
            value = answers["metrics"][threshold.metric]
        else:
            value = results[threshold.mode or primary].metrics[threshold.metric]
        checks.append(  # an answer metric no judge reply could be read for (n/a) fails its floor
            {"metric": threshold.label(primary), "threshold": threshold.value, "value": value,
             "ok": value is not None and value >= threshold.value - 1e-9}
        )
    return checks


def primary_mode(modes: Sequence[str], default: str) -> str:
    """The mode unqualified thresholds and answers apply to: the configured one if evaluated, else the first."""
    return default if default in modes else modes[0]


# ---------------------------------------------------------------- the whole run


def measure_retrieval(
    settings: Any, questions: Sequence[GoldQuestion], modes: Sequence[str], *, primary: str,
    on_question: Callable[[int, int], None] | None = None,
) -> tuple[Any, dict[str, ModeResult], list[str]]:
    """The retrieval part of ``kb eval`` (and of each side of ``--compare``): the retriever (in the
    ``primary`` mode), every mode's results (reranked with ``KB_RERANK``), and the gold sources that
    are not in the index for the caller's groups (a typo would otherwise just look like a miss)."""
    retriever = build_retriever(settings, k=EVAL_K, command="eval", mode=primary)
    readable = readable_by(retriever.groups)  # --as-groups: a source those groups may not read is unknown
    unknown = unknown_sources(questions, indexed_sources(
        retriever.store, Filter(readable_by=readable) if readable is not None else None))
    reranker = build_reranker(settings, command="eval", usage_extra={"eval_step": "rerank"})  # None: KB_RERANK=off
    results = evaluate_retrieval(retriever, questions, modes, top_k=settings.top_k, on_question=on_question,
                                 reranker=reranker, candidates=settings.rerank_candidates)
    return retriever, results, unknown


def run_eval(
    settings: Any,
    gold: Path,
    *,
    modes: Sequence[str] = ("dense", "bm25", "hybrid"),
    answers: bool = False,
    fail_under: Sequence[str] = (),
    on_question: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Everything ``kb eval`` does except printing: returns the report (``eval_report.report_json``)."""

    modes = list(dict.fromkeys(m.lower() for m in modes)) or list(MODES)
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"unknown search mode '{mode}': use one of {', '.join(MODES)}")
    thresholds = [parse_threshold(spec, modes) for spec in fail_under]
    if any(t.metric in ANSWER_METRICS for t in thresholds) and not answers:
        raise UsageError("--fail-under on an answer metric needs --answers")
    questions = load_gold(gold)
    if answers and not settings.llm_configured:
        missing = " and ".join(settings.missing_llm_settings())
        raise ConfigError(f"--answers needs a Databricks model: set {missing}")

    primary = primary_mode(modes, settings.search_mode)
    retriever, results, unknown = measure_retrieval(settings, questions, modes, primary=primary, on_question=on_question)
    relevance = relevance_summary(results[primary], min_relevance(settings))
    answer_report = None
    if answers:
        retriever.k = settings.top_k
        answer_report = evaluate_answers(settings, questions, mode=primary, retriever=retriever, on_question=on_question)
    checks = check_thresholds(thresholds, results, primary, answer_report)
    floor = min_relevance(settings)
    report = report_json(
        gold=str(gold),
        questions=questions,
        results=results,
        by_kind={mode: metrics_by_kind(result.rows, floor) for mode, result in results.items()},
        primary=primary,
        index_dir=str(settings.index_dir),
        relevance=relevance,
        unknown=unknown,
        targets=targets(results),
        answers=answer_report,
        checks=checks,
    )
    report["settings"] = retrieval_settings(settings)
    return report


def failed_checks_message(report: dict[str, Any]) -> str:
    failed = [c for c in report["fail_under"] if not c["ok"]]
    parts = [f"{c['metric']} = {c['value']:.3f} < {c['threshold']:.3f}" if c["value"] is not None
             else f"{c['metric']} = n/a (no judge reply could be read) < {c['threshold']:.3f}" for c in failed]
    return "below --fail-under: " + "; ".join(parts)
