"""The README and docs/ stay true: every link resolves (file and heading), every setting kb reads is
documented and every documented setting exists, and every `kb` command line shown uses real commands
and options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from agent.cli.app import app
from agent.settings import ENV_NAMES

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose(page: Path) -> str:
    """The page without fenced code blocks."""
    return re.sub(r"^```.*?^```", "", page.read_text("utf-8"), flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _prose(page), flags=re.M)}


def _code_blocks(page: Path) -> list[str]:
    """Shell-ish code blocks (```bash, ```sh, ```console, ```text): where command lines are shown."""
    return re.findall(r"^```(?:bash|sh|shell|console|text)\n(.*?)^```", page.read_text("utf-8"), flags=re.S | re.M)


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    assert len(readme.splitlines()) <= 300
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading '{anchor}' in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_file_path_mentioned_exists() -> None:
    missing = []
    for page in PAGES:
        for path in set(re.findall(r"`((?:agent|ingest|tests|bench|eval|knowledge)/[\w/.-]+\.(?:py|jsonl|md|js|css|html))`",
                                   page.read_text("utf-8"))):
            if not (REPO / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, "paths named in the docs that do not exist: " + ", ".join(sorted(missing))


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    configuration = (REPO / "docs" / "configuration.md").read_text("utf-8")
    missing = [name for name in ENV_NAMES.values() if f"`{name}`" not in configuration]
    assert not missing, f"settings not in docs/configuration.md: {missing}"
    known = set(ENV_NAMES.values())
    mentioned = set()
    for page in PAGES:
        mentioned |= set(re.findall(r"\bKB_[A-Z0-9_]*[A-Z0-9]\b", page.read_text("utf-8")))
    assert not sorted(mentioned - known), f"documented but not read by kb: {sorted(mentioned - known)}"


def _commands() -> dict[str, object]:
    group = typer.main.get_command(app)
    assert group.commands, "kb has no commands?"
    return dict(group.commands)


def test_every_kb_command_line_shown_uses_real_commands_and_options() -> None:
    commands = _commands()
    problems = []
    for page in PAGES:
        for block in _code_blocks(page):
            for line in block.splitlines():
                line = line.split(" # ")[0].strip().removeprefix("$ ")
                match = re.match(r"^(?:\.venv/bin/)?kb\s+(.*)$", line)
                if not match:
                    continue
                try:
                    words = shlex.split(match.group(1))
                except ValueError:
                    continue
                words = [w for w in words if w not in ("--verbose", "-v", "--log-json")]
                if not words or words[0].startswith("-"):
                    continue
                name = words[0]
                if name not in commands:
                    problems.append(f"{page.name}: unknown command in '{line}'")
                    continue
                command, rest = commands[name], words[1:]
                while getattr(command, "commands", None) and rest and rest[0] in command.commands:
                    command, rest = command.commands[rest[0]], rest[1:]  # a sub-command (kb deploy app)
                options = {opt for param in command.params for opt in getattr(param, "opts", [])}
                options |= {"--help"}
                for word in rest:
                    if word.startswith("-") and word.split("=")[0] not in options:
                        problems.append(f"{page.name}: '{word}' is not an option of kb {name} in '{line}'")
    assert not problems, "\n".join(problems)
