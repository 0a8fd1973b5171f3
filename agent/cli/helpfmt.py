"""``kb --help`` and ``kb COMMAND --help``: plain, readable in 80 columns, with an example per command.

kb's Typer app uses ``rich_markup_mode=None`` (Rich's help formatter costs ~0.1 s of every
``kb --help``); Typer's plain formatter then shows types as metavars (``<list[Path]>``,
``<int range>``), required arguments as ``{query}`` and cuts command summaries to the width with
``...``. ``KbGroup`` and ``KbCommand`` (Typer's public ``TyperGroup``/``TyperCommand``, only their
formatting methods overridden) print instead:

- the command list with each command's whole first sentence, wrapped rather than cut;
- usage and argument names in capitals (``kb search [OPTIONS] QUERY``, ``kb ingest [OPTIONS] [PATH]...``);
- option values as ``N`` (numbers) or a name (``--mode MODE``, ``--fail-under METRIC=VALUE``), ranges
  as ``1 to 50``;
- an ``Examples`` section from ``EXAMPLES``.

``readable_help(app)`` applies them to every command and group registered on ``app``. Only Typer
is imported here: ``kb --help`` stays fast (tests/e2e/test_startup.py).
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

# Value names where the option's own name reads poorly (an explicit metavar= in app.py wins).
METAVARS = {
    "paths": "PATH",
    "gold": "GOLD_FILE",
    "--fail-under": "METRIC=VALUE",
    "--by": "KEY",
    "--since": "WHEN",
    "--log-level": "LEVEL",
    "--out": "FOLDER",
    "--api-keys-secret": "SCOPE/KEY",
}

# One to three command lines per command, shown under "Examples" in its --help.
EXAMPLES: dict[str, list[str]] = {
    "ingest": [
        "kb ingest                        # KB_KNOWLEDGE_DIR (./knowledge)",
        "kb ingest docs/ handbook.pdf",
        "kb ingest --dry-run docs/        # what would change",
    ],
    "search": [
        'kb search "vacation days"',
        'kb search "VPN Berlin" --mode bm25 --explain',
    ],
    "ask": [
        'kb ask "How many vacation days do I get?"',
        'kb ask "Who approves expenses over 800 euros?" --json',
    ],
    "chat": [
        "kb chat",
        "kb chat --session onboarding --agent",
    ],
    "agent": [
        'kb agent "How many hours are 23 vacation days?"',
    ],
    "serve": [
        "kb serve                         # http://127.0.0.1:8000/",
        "KB_API_KEYS=notebooks:<key> kb serve --host 0.0.0.0 --workers 4",
    ],
    "eval": [
        "kb eval gold.jsonl",
        "kb eval gold.jsonl --mode hybrid --fail-under nDCG@10=0.8",
        "kb eval gold.jsonl --answers --fail-under correct=0.7",
        "kb eval gold.jsonl --compare KB_SEARCH_MODE=bm25",
        "kb eval gold.jsonl --compare KB_FUSION=rrf --compare KB_RRF_K=30",
        "kb eval gold.jsonl --baseline KB_INDEX_DIR=.kb1 --compare KB_INDEX_DIR=.kb2",
    ],
    "usage": [
        "kb usage",
        "kb usage --since 30d --by day",
    ],
    "doctor": [
        "kb doctor",
        "kb doctor --json",
    ],
    "app": [
        "kb deploy app --dry-run --out databricks-app",
    ],
}


# Starts only where a number starts (no retry inside a run of digits): linear on any input.
_RANGE = re.compile(r"(?<![\d.])(-?\d+(?:\.\d+)?)<=x<=(-?\d+(?:\.\d+)?)")


def _summary(command: Any) -> str:
    """The command's ``short_help``, else the first sentence of its help, whole."""
    if command.short_help:
        return " ".join(command.short_help.split())
    text = " ".join((command.help or "").split("\n\n")[0].split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _value_name(param: Any, ctx: Any) -> str:
    """``N`` for numbers, ``X`` for decimals, else a name: METAVARS, or the option's in capitals."""
    if getattr(param, "metavar", None):
        return str(param.metavar)
    longest = max(getattr(param, "opts", None) or [param.name], key=len)
    if longest in METAVARS or param.name in METAVARS:
        return METAVARS.get(longest) or METAVARS[param.name]
    shown = str(param.display_type(ctx)) if hasattr(param, "display_type") else ""
    if "float" in shown:
        return "X"
    if "int" in shown:
        return "N"
    return longest.lstrip("-").replace("-", "_").upper()


def _argument_usage(param: Any, ctx: Any) -> str:
    name = _value_name(param, ctx)
    many = param.nargs != 1
    if param.required:
        return f"{name}..." if many else name
    return f"[{name}]..." if many else f"[{name}]"


class KbCommand(TyperCommand):
    """A command whose plain help has readable value names and an Examples section."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        pieces += [_argument_usage(p, ctx) for p in self.get_params(ctx) if p.param_type_name == "argument"]
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            names, text = record
            text = _RANGE.sub(r"\1 to \2", text)  # "[default: 5; 1<=x<=50]" -> "[default: 5; 1 to 50]"
            if param.param_type_name == "argument":
                arguments.append((_argument_usage(param, ctx).strip("[]").replace("]...", "..."), text))
            elif param.param_type_name == "option":
                if not (getattr(param, "is_flag", False) or getattr(param, "count", False)):
                    shown = param.display_type_rich(ctx)
                    value = _value_name(param, ctx) + ("..." if param.nargs != 1 else "")
                    if shown and names.endswith(f" {shown}"):
                        names = names[: -len(shown)] + value
                options.append((names, text))
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        examples = EXAMPLES.get(self.name or "")
        if examples:
            with formatter.section("Examples"):
                for line in examples:  # as they are: never re-wrapped
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


class KbGroup(TyperGroup):
    """The command list with each command's first sentence whole (wrapped), never cut with ``...``."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, _summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def readable_help(app: Any) -> None:
    """Give every command and group registered on the Typer ``app`` (and its sub-apps) these formatters."""
    from typer.models import DefaultPlaceholder

    if app.info.cls is None or isinstance(app.info.cls, DefaultPlaceholder):
        app.info.cls = KbGroup
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):  # Typer's default; a command's own class is kept
            info.cls = KbCommand
    for group in app.registered_groups:
        readable_help(group.typer_instance)
