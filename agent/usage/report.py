"""``kb usage``: the usage ledger summed up by command, endpoint, caller or day.

Per group: requests, errors, prompt / completion / total tokens (summed over the calls that
reported usage; ``unreported`` counts the others, so no total is silently short), and latency
p50 / p95 (nearest-rank, in milliseconds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.errors import UsageError
from agent.terminal import literal

GROUPINGS = ("command", "endpoint", "caller", "day")
_SPAN = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``7d``, ``24h``, ``30m``, ``2w``, an ISO date/time (local time unless it says otherwise),
    or ``all`` (``None``: no limit)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    now = now or datetime.now(timezone.utc)
    shown = text if len(text) <= 40 else text[:40] + "…"
    match = _SPAN.match(text)
    try:
        if match:
            return now - timedelta(**{_UNITS[match.group(2).lower()]: int(match.group(1))})
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"invalid --since '{shown}': use a span like 7d, 24h, 30m, 2w, a date like 2025-01-31, or 'all'"
            ) from None
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # a span or date before year 1 (or a number too long to read)
        raise UsageError(f"invalid --since '{shown}': too far back; use 'all' for every recorded call") from None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _key(row: dict[str, Any], by: str) -> str:
    if by == "day":
        moment = datetime.strptime(row["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return moment.astimezone().strftime("%Y-%m-%d")  # the user's local day
    return row.get(by) or "-"


@dataclass
class Group:
    key: str
    requests: int = 0
    errors: int = 0
    unreported: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.requests += 1
        if row.get("status") != "ok":
            self.errors += 1
        if row.get("prompt_tokens") is None:
            self.unreported += 1
        else:
            self.prompt_tokens += int(row["prompt_tokens"])
            self.completion_tokens += int(row.get("completion_tokens") or 0)
        self.latencies.append(float(row.get("latency_ms") or 0.0))

    def to_json(self) -> dict[str, Any]:
        p50, p95 = percentile(self.latencies, 50), percentile(self.latencies, 95)
        return {
            "key": self.key,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "unreported": self.unreported,
            "latency_ms": {"p50": _round(p50), "p95": _round(p95)},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(rows: list[dict[str, Any]], by: str) -> tuple[list[Group], Group]:
    """Groups (most requests first; days in order) and the overall total."""
    if by not in GROUPINGS:
        raise UsageError(f"invalid --by '{by}': use one of {', '.join(GROUPINGS)}")
    groups: dict[str, Group] = {}
    total = Group("total")
    for row in rows:
        key = _key(row, by)
        groups.setdefault(key, Group(key)).add(row)
        total.add(row)
    ordered = sorted(groups.values(), key=(lambda g: g.key) if by == "day" else (lambda g: (-g.requests, g.key)))
    return ordered, total


def report_json(rows: list[dict[str, Any]], *, by: str, since: datetime | None, ledger: str | None) -> dict[str, Any]:
    groups, total = summarize(rows, by)
    return {
        "ledger": ledger,
        "since": since.isoformat() if since else None,
        "by": by,
        "groups": [g.to_json() for g in groups],
        "total": {k: v for k, v in total.to_json().items() if k != "key"},
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def usage_table(report: dict[str, Any]) -> Any:
    """A Rich table of ``report_json``'s groups with a total row, readable in 80 columns: two-line
    headers, no vertical rules, numbers never wrapped or cut (a long group name folds instead)."""
    from rich import box
    from rich.table import Table

    since = report["since"]
    title = f"kb usage by {report['by']}" + (f" since {since[:16].replace('T', ' ')} UTC" if since else "")
    table = Table(title=title, title_justify="left", show_footer=len(report["groups"]) > 1, box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    rows = [(g["key"], g) for g in report["groups"]]
    total = report["total"]
    columns = [
        (report["by"], "left", lambda g: g, "total"),
        ("requests", "right", lambda g: f"{g['requests']:,}", f"{total['requests']:,}"),
        ("errors", "right", lambda g: f"{g['errors']:,}", f"{total['errors']:,}"),
        ("prompt\ntokens", "right", lambda g: _tokens(g, "prompt_tokens"), _tokens(total, "prompt_tokens")),
        ("completion\ntokens", "right", lambda g: _tokens(g, "completion_tokens"), _tokens(total, "completion_tokens")),
        ("latency\np50", "right", lambda g: _ms(g["latency_ms"]["p50"]), _ms(total["latency_ms"]["p50"])),
        ("latency\np95", "right", lambda g: _ms(g["latency_ms"]["p95"]), _ms(total["latency_ms"]["p95"])),
    ]
    for index, (name, justify, _, footer) in enumerate(columns):
        if index == 0:  # group names (endpoint names are long) fold rather than being cut; a day never breaks
            table.add_column(name, justify=justify, footer=footer, overflow="fold", min_width=10)
        else:
            table.add_column(name, justify=justify, footer=footer, no_wrap=True)
    for key, group in rows:
        # Caller and endpoint names are printed as they are (no markup, no emoji codes, no escapes).
        table.add_row(literal(key), *[render(group) for _, _, render, _ in columns[1:]])
    if total["unreported"]:
        table.caption = f"* {total['unreported']} call(s) did not report token usage: their tokens are not in the sums"
        table.caption_justify = "left"
    return table


def _tokens(group: dict[str, Any], key: str) -> str:
    return f"{group[key]:,}" + ("*" if group["unreported"] else "")
