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
    by_kind: dict[str, dict[str, Any]] | None = None,
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
                "by_kind": (by_kind or {}).get(mode, {}),
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
        f"index {escape(report['index_dir'])}; metrics on answerable questions, top {report['k']} documents (page ranks)"
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
    primary = modes.get(report["primary_mode"]) or next(iter(modes.values()))
    if primary.get("by_kind"):
        out.print(f"\n[bold]By question kind[/] ({escape(report['primary_mode'])})")
        print_kind_table(primary["by_kind"], out)

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
        for kind, km in (answers.get("by_kind") or {}).items():
            if len(answers.get("by_kind") or {}) < 2:
                break
            if km["answerable"]:
                out.print(f"  {escape(kind)} ({km['answerable']}): correct {_pct(km['correct'])}, "
                          f"answer score {_num(km['answer_score'])}, grounded {_pct(km['grounded'])}")
            else:
                out.print(f"  {escape(kind)} ({km['unanswerable']}): declined {_pct(km['declined'])}")
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


KIND_COLUMNS = ("hit@5", "MRR", "nDCG@10")


def print_kind_table(by_kind: dict[str, dict[str, Any]], out: Console) -> None:
    """One row per question kind and ``overall``: hit@5, MRR@10, nDCG@10 over its answerable
    questions, how many of those the relevance gate refuses, and how many unanswerable ones it declines."""
    table = Table(show_edge=False, pad_edge=False)
    for name, justify in (("kind", "left"), ("questions", "right"), ("hit@5", "right"), ("MRR@10", "right"),
                          ("nDCG@10", "right"), ("refused", "right"), ("declined", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for kind, entry in by_kind.items():
        metrics = entry.get("metrics") or {}
        cells = [_num(metrics.get(name)) if metrics else "-" for name in KIND_COLUMNS]
        refused = "-" if entry.get("refused") is None else _pct(entry["refused"])
        declined = "-" if entry.get("declined") is None else _pct(entry["declined"])
        label = f"[bold]{escape(kind)}[/]" if kind == "overall" else escape(kind)
        table.add_row(label, str(entry["questions"]), *cells, refused, declined)
    out.print(table)
    out.print("[dim]refused: answerable questions the relevance floor declines (wrong); "
              "declined: unanswerable questions it declines (right)[/]")


def _pct(value: float | None) -> str:
    """A rate, or n/a when no judge reply behind it could be read."""
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- kb eval --compare


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 5e-5:
        return "0"
    colour = "green" if value > 0 else "red"
    return f"[{colour}]{value:+.3f}[/]"


def print_compare(report: dict[str, Any], out: Console, *, max_changed: int = 30) -> None:
    """The two configurations, the difference per metric and per kind, and the changed questions."""
    base, variant = report["baseline"], report["variant"]
    out.print(
        f"Gold set [bold]{escape(report['gold'])}[/]: {report['questions']} questions "
        f"({report['answerable']} answerable, {report['unanswerable']} unanswerable); top {report['k']}"
    )
    differing = [key for key in base["settings"] if base["settings"][key] != variant["settings"].get(key)]
    out.print(f"  baseline: {escape(base['label'])}")
    out.print(f"  variant:  {escape(variant['label'])}")
    for key in differing:
        out.print(f"    {escape(key)}: {escape(base['settings'][key])} -> {escape(variant['settings'].get(key))}")
    if not differing:
        out.print("    [yellow]the two sides resolve to the same retrieval settings[/]")
    for side in (base, variant):
        for source in side.get("unknown_sources") or []:
            out.print(f"[yellow]warning:[/] {escape(side['label'])}: gold source {escape(source)} is not in its index")

    table = Table(show_edge=False, pad_edge=False)
    for name in ("metric", "baseline", "variant", "delta"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for name, row in report["metrics"].items():
        table.add_row(name, _num(row["baseline"]), _num(row["variant"]), _signed(row["delta"]))
    out.print(table)

    kinds = Table(show_edge=False, pad_edge=False)
    kinds.add_column("kind")
    kinds.add_column("questions", justify="right")
    for name in ("hit@5", "MRR@10", "nDCG@10", "declined"):
        kinds.add_column(name, justify="right")
    for kind, entry in report["by_kind"].items():
        cells = [_signed(entry[name]["delta"]) for name in ("hit@5", "MRR", "nDCG@10", "declined")]
        kinds.add_row(escape(kind), str(entry["questions"]), *cells)
    out.print("\n[bold]By question kind[/] (variant - baseline)")
    out.print(kinds)

    changed = report["changed"]
    better = sum(1 for c in changed if c["better"])
    out.print(f"\n[bold]Changed[/]: {len(changed)} question(s), {better} better, {len(changed) - better} worse "
              "(rank of the first gold page, baseline -> variant; '-' = not in the top 10)")
    for row in changed[:max_changed]:
        mark = "[green]+[/]" if row["better"] else "[red]-[/]"
        before = "-" if row["before"] is None else row["before"]
        after = "-" if row["after"] is None else row["after"]
        out.print(f"  {mark} {escape(row['id'])} ({escape(row.get('kind') or '')}): {escape(before)} -> {escape(after)}  "
                  f"{escape(row['question'])}")
    if len(changed) > max_changed:
        out.print(f"  ... and {len(changed) - max_changed} more (see --json)")
