"""The ``kb eval`` report: one JSON document, and its human rendering with Rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from agent.evaluation.metrics import METRICS
from agent.terminal import markup


def escape(text: Any) -> str:
    """Gold ids, questions, source names and judge replies are untrusted: one literal line each."""
    return markup(text, line=True)


def report_json(
    *,
    gold: str,
    questions: list[Any],
    results: dict[str, Any],
    primary: str,
    index_dir: str,
    relevance: dict[str, Any] | None,
    unknown: list[str],
    targets: list[dict[str, Any]],
    answers: dict[str, Any] | None,
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    answerable = sum(1 for q in questions if q.answerable)
    return {
        "gold": gold,
        "index_dir": index_dir,
        "questions": len(questions),
        "answerable": answerable,
        "unanswerable": len(questions) - answerable,
        "k": 10,
        "primary_mode": primary,
        "unknown_sources": unknown,
        "modes": {
            mode: {
                "metrics": {name: round(value, 4) for name, value in result.metrics.items()},
                "misses": result.misses(5),
                "per_question": result.rows,
            }
            for mode, result in results.items()
        },
        "targets": targets,
        "relevance": relevance,
        "answers": answers,
        "fail_under": checks,
        "ok": all(check["ok"] for check in checks),
    }


def print_report(report: dict[str, Any], out: Console, *, max_misses: int = 20) -> None:
    out.print(
        f"Gold set [bold]{escape(report['gold'])}[/]: {report['questions']} questions "
        f"({report['answerable']} answerable, {report['unanswerable']} unanswerable); "
        f"index {escape(report['index_dir'])}; metrics on answerable questions, top {report['k']}"
    )
    for source in report["unknown_sources"]:
        out.print(f"[yellow]warning:[/] gold source {escape(source)} is not in the index (typo, or not ingested?)")

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("mode")
    for name in METRICS:
        table.add_column(name, justify="right")
    modes = report["modes"]
    best = {name: max(m["metrics"][name] for m in modes.values()) for name in METRICS}
    for mode, data in modes.items():
        label = mode + (" *" if mode == report["primary_mode"] else "")
        cells = []
        for name in METRICS:
            value = data["metrics"][name]
            text = f"{value:.3f}"
            cells.append(f"[bold]{text}[/]" if len(modes) > 1 and value >= best[name] - 1e-9 else text)
        table.add_row(label, *cells)
    out.print(table)
    out.print("[dim]* the mode kb search/ask use (KB_SEARCH_MODE); bold: best per column[/]")

    if report["targets"]:
        out.print("\n[bold]Targets[/]")
        for check in report["targets"]:
            mark = "[green]ok[/]  " if check["ok"] else "[red]MISS[/]"
            out.print(f"  {mark} {check['target']}: {check['value']:.3f} (vs {check['against']:.3f})")

    for mode, data in modes.items():
        misses = data["misses"]
        if not misses:
            continue
        out.print(f"\n[bold]Misses ({mode})[/]: {len(misses)} answerable question(s) with no expected source in the top 5")
        for miss in misses[:max_misses]:
            found = ", ".join(f"{s} at {r}" for s, r in miss["found_at"].items()) or "not in the top 10"
            got = ", ".join(dict.fromkeys(s or "?" for s in miss["retrieved"]))
            out.print(f"  {escape(miss['id'])}: {escape(miss['question'])}")
            out.print(f"     expected {escape(', '.join(miss['expected']))} ({escape(found)}); top 5: {escape(got)}")
        if len(misses) > max_misses:
            out.print(f"  ... and {len(misses) - max_misses} more (see --json)")

    relevance = report["relevance"]
    if relevance and relevance.get("unanswerable_count"):
        out.print(f"\n[bold]Refusal[/] ({relevance['mode']}, best cosine in the passages kb ask would use)")
        a, u = relevance["answerable"], relevance["unanswerable"]
        if a:
            out.print(f"  answerable:   min {a['min']:.3f}  median {a['median']:.3f}  max {a['max']:.3f}")
        if u:
            out.print(f"  unanswerable: min {u['min']:.3f}  median {u['median']:.3f}  max {u['max']:.3f}")
        floor = relevance["floor"]
        if floor > 0:
            out.print(
                f"  floor {floor:.2f} (KB_MIN_RELEVANCE): declines {relevance['declined_unanswerable']}/"
                f"{relevance['unanswerable_count']} unanswerable, wrongly refuses {relevance['refused_answerable']}/"
                f"{relevance['answerable_count']} answerable"
            )
        else:
            out.print("  no floor: kb ask never declines on relevance (set KB_MIN_RELEVANCE)")
        if "suggested_floor" in relevance:
            out.print(
                f"  suggested KB_MIN_RELEVANCE={relevance['suggested_floor']:.3f} (refuses no answerable question, with a margin): declines "
                f"{relevance['suggested_declines']}/{relevance['unanswerable_count']}, wrongly refuses "
                f"{relevance['suggested_refusals']}/{relevance['answerable_count']}"
            )

    answers = report["answers"]
    if answers:
        m = answers["metrics"]
        out.print(f"\n[bold]Answers[/] ({answers['mode']}, judged by the model)")
        if m["unjudged"]:  # first: the rates below leave these questions out
            total = m["answerable"] + m["unanswerable"]
            out.print(f"  [yellow]{m['unjudged']} judge repl(ies) could not be read (of {total}): "
                      "the rates below leave those questions out[/]")
        out.print(
            f"  answerable {m['answerable']}: correct {_pct(m['correct'])}, partially {_pct(m['partially'])}, "
            f"wrong {_pct(m['wrong'])}; answer score {_num(m['answer_score'])}; grounded {_pct(m['grounded'])}; "
            f"wrongly declined {m['false_refusals']}"
        )
        if m["unanswerable"]:
            out.print(f"  unanswerable {m['unanswerable']}: declined {_pct(m['declined'])}")
        usage = answers.get("usage") or {}
        if usage.get("reported"):
            out.print(f"  tokens: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion")
        bad = [r for r in answers["questions"] if (r["sources"] and r.get("verdict") != "correct")
               or (not r["sources"] and not r.get("declined"))]
        for row in bad[:max_misses]:
            what = row.get("verdict") if row["sources"] else "answered instead of declining"
            out.print(f"  {escape(row['id'])}: {escape(str(what))}: {escape(row.get('reason') or '')}")

    if report["fail_under"]:
        out.print("\n[bold]Fail-under[/]")
        for check in report["fail_under"]:
            mark = "[green]ok[/]  " if check["ok"] else "[red]FAIL[/]"
            out.print(f"  {mark} {check['metric']} {_num(check['value'])} (floor {check['threshold']:.3f})")


def _pct(value: float | None) -> str:
    """A rate, or n/a when no judge reply behind it could be read."""
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
