"""Regular expressions on hostile input: nothing backtracks catastrophically (issue 18, item 2).

Python's ``re`` cannot be interrupted (a signal handler only runs once the match returns), so every
case runs in a child interpreter that reports each case as it finishes; the test kills the child
and fails, naming the case, when one takes too long. A regression fails in seconds, never hangs.

- The three attacks of the issue, through the real loaders and through their patterns directly:
  ``# a`` + 5,000 spaces + ``b`` (Markdown and notebook headings: cubic before, never finished)
  and a 60 KB ``title:`` line in front matter (quadratic before: 48 s).
- A generic harness: every regular expression literal in ``ingest/`` and ``agent/`` (found by
  reading the source with ``ast``, so a new one is covered without touching this file), the
  separators the splitters use, and the patterns built at run time, each fed long adversarial
  lines (50-64 KB of repeated spaces, ``#``, ``:``, backticks, ``*``, ``_``, brackets, Unicode
  whitespace...).
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("ingest/**/*.py"), *ROOT.glob("agent/**/*.py")])
_RE_CALLS = {"compile", "search", "match", "fullmatch", "sub", "subn", "split", "findall", "finditer"}

# What the child runs: reads a JSON list of cases on stdin, prints "done <id> <seconds>" per case.
_WORKER = r"""
import json, re, sys, time
sys.setrecursionlimit(10000)

def build(spec):
    kind = spec["input"][0]
    if kind == "repeat":
        _, prefix, atom, size, suffix = spec["input"]
        return prefix + atom * max(1, size // len(atom)) + suffix
    return spec["input"][1]

def run(spec, text):
    kind = spec["kind"]
    if kind == "regex":
        pattern = re.compile(spec["pattern"], spec["flags"])
        if spec.get("use") in ("match", "fullmatch"):  # anchored at the start by the caller
            pattern.match(text)
        else:  # search, findall, sub, split... and compiled patterns: every start position
            for _ in pattern.finditer(text):
                pass
    elif kind == "call":
        module, _, name = spec["target"].rpartition(".")
        target = getattr(__import__(module, fromlist=[name]), name)
        target(text, *spec.get("args", []))
    elif kind == "load":
        from pathlib import Path
        from ingest.loaders import SkipFile, SourceFile, load
        path = Path(spec["path"])
        try:
            load(SourceFile(path.parent, path, path.name))
        except SkipFile:
            pass

print("ready", flush=True)
for spec in json.load(sys.stdin):
    text = build(spec) if "input" in spec else ""
    start = time.perf_counter()
    run(spec, text)
    print("done", spec["id"], round(time.perf_counter() - start, 3), flush=True)
"""


def run_cases(cases: list[dict], *, per_case: float) -> dict[str, float]:
    """Run ``cases`` in one child; fail naming the first case that runs past ``per_case`` seconds."""
    child = subprocess.Popen(
        [sys.executable, "-c", _WORKER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdin is not None and child.stdout is not None
    times: dict[str, float] = {}
    try:
        child.stdin.write(json.dumps(cases))
        child.stdin.close()
        pending = [case["id"] for case in cases]
        deadline = time.monotonic() + 60  # the child's own start
        while pending:
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"{pending[0]} did not finish within {per_case} s (catastrophic backtracking?)")
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the worker died on {pending[0]}: {child.stderr.read() if child.stderr else ''}"[-2000:])
            if line.startswith("done "):
                _, case_id, seconds = line.split()
                times[case_id] = float(seconds)
                pending.remove(case_id)
            deadline = time.monotonic() + per_case
    finally:
        child.kill()
        child.wait()
    return times


# ---------------------------------------------------------------- the attacks of the issue

HEADING_ATTACK = "# a" + " " * 5000 + "b\n"  # 2,000 spaces took 29 s before; 5,000 never finished
FRONT_MATTER_ATTACK = "---\ntitle: a" + " " * 60_000 + "b\n---\nBody.\n"  # 48 s before


def _notebook(markdown: str) -> str:
    return json.dumps({"cells": [{"cell_type": "markdown", "source": markdown}], "metadata": {}})


def test_the_attacks_of_the_issue_finish_through_the_real_loaders(tmp_path: Path) -> None:
    files = {
        "heading.md": HEADING_ATTACK,
        "heading-100k.md": "# a" + " " * 100_000 + "b\n",
        "front-matter.md": FRONT_MATTER_ATTACK,
        "notebook.ipynb": _notebook("## a" + " " * 5000 + "b"),
        "databricks.py": "# Databricks notebook source\n# MAGIC %md\n# MAGIC ## a" + " " * 5000 + "b\n",
        "definitions.java": "public\n" * 20_000,  # quadratic in the code-definition pattern before
    }
    cases = []
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        cases.append({"id": name, "kind": "load", "path": str(tmp_path / name)})
    times = run_cases(cases, per_case=30)
    slow = {name: seconds for name, seconds in times.items() if seconds >= 2}
    assert not slow, f"took 2 s or more: {slow}"


def test_the_attacks_of_the_issue_finish_on_the_patterns_themselves() -> None:
    from ingest.formats import markup

    cases = [
        {"id": f"{name}:{label}", "kind": "regex", "pattern": pattern.pattern, "flags": pattern.flags,
         "input": ["text", text]}
        for name, pattern in (("_H1", markup._H1), ("ATX_HEADING", markup.ATX_HEADING),
                              ("_FRONT_TITLE", markup._FRONT_TITLE), ("_FRONT_MATTER", markup._FRONT_MATTER))
        for label, text in (("heading", HEADING_ATTACK), ("front-matter", FRONT_MATTER_ATTACK),
                            ("front-title", "title: a" + " \t" * 30_000 + "b"))
    ]
    cases.append({"id": "split._DEFINITION", "kind": "regex", "pattern": _pattern("ingest.split", "_DEFINITION").pattern,
                  "flags": _pattern("ingest.split", "_DEFINITION").flags, "input": ["text", "public\n" * 20_000]})
    times = run_cases(cases, per_case=10)
    assert max(times.values()) < 2, times


def test_headings_and_titles_still_read_as_before(tmp_path: Path) -> None:
    from ingest.formats.markup import front_matter_title, heading_text
    from ingest.loaders import SourceFile, load

    assert heading_text(" Expense policy ## ") == "Expense policy"
    assert heading_text("C#") == "C#" and heading_text("Title #  ") == "Title"
    assert front_matter_title('layout: x\ntitle: "Expense policy"  \nauthor: me') == "Expense policy"
    assert front_matter_title("title: 'It''s'") == "It''s"
    page = tmp_path / "policy.md"
    page.write_text("---\ntitle: Front\n---\n\n#   Expense policy   ##\n\nText.\n", encoding="utf-8")
    assert load(SourceFile(tmp_path, page, page.name)).title == "Expense policy"
    page.write_text(HEADING_ATTACK, encoding="utf-8")
    title = load(SourceFile(tmp_path, page, page.name)).title
    assert title.startswith("a ") and len(title) <= 200  # a title, not 5 KB of metadata per chunk


def _pattern(module: str, name: str) -> re.Pattern:
    return getattr(__import__(module, fromlist=[name]), name)


# ---------------------------------------------------------------- every regex in the project


def _flags(node: ast.expr | None) -> int | None:
    """The value of a flags argument such as ``re.MULTILINE | re.I`` (None when not a constant)."""
    if node is None:
        return 0
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "re":
        return int(getattr(re, node.attr))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _flags(node.left), _flags(node.right)
        return None if left is None or right is None else left | right
    return None


def project_regexes() -> list[tuple[str, str, int, str]]:
    """(where, pattern, flags, use) for every ``re.<function>("literal", ...)`` in ingest/ and agent/;
    ``use`` is the function (a ``re.match`` only tries the start; anything else, every position)."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in _RE_CALLS and node.args):
                continue
            pattern = node.args[0]
            if not (isinstance(pattern, ast.Constant) and isinstance(pattern.value, str)):
                continue  # built at run time: listed in runtime_regexes()
            position = {"compile": 1, "search": 2, "match": 2, "fullmatch": 2, "split": 3, "findall": 2,
                        "finditer": 2, "sub": 4, "subn": 4}[node.func.attr]
            flag_node = next((k.value for k in node.keywords if k.arg == "flags"), None)
            if flag_node is None and len(node.args) > position:
                flag_node = node.args[position]
            flags = _flags(flag_node)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if flags is None:  # not a literal: try the strictest combination
                flags = re.MULTILINE | re.DOTALL | re.IGNORECASE
            found.append((where, pattern.value, flags, node.func.attr))
    return list({(p, f, u): (w, p, f, u) for w, p, f, u in found}.values())  # one case per distinct use


def runtime_regexes() -> list[tuple[str, str, int, str]]:
    """Patterns not written as a literal ``re`` call: the splitters' separators, the Databricks
    notebook patterns (built per comment marker)."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    from ingest.formats.code import LANGUAGES
    from ingest.split import _LANGUAGE_SEPARATORS

    found = []
    for language, separators in _LANGUAGE_SEPARATORS.items():
        found += [(f"split {language} separator", s, 0) for s in separators if s]
    known = {item.value for item in Language}
    for language in sorted(set(LANGUAGES.values()) & known | {"markdown"}):
        try:
            separators = RecursiveCharacterTextSplitter.get_separators_for_language(Language(language))
        except ValueError:  # known to langchain but without separators: ingest.split uses its own
            continue
        for s in separators:
            if s:
                found.append((f"langchain {language} separator", s, 0))
    for comment in ("#", "--", "//"):
        c = re.escape(comment)
        found += [
            (f"databricks separator {comment}", rf"^{c} COMMAND -+\s*$", re.MULTILINE),
            (f"databricks magic {comment}", rf"^{c} MAGIC ?", re.MULTILINE),
            (f"databricks title {comment}", rf"^{c} DBTITLE \d+,(.*)$", re.MULTILINE),
        ]
    return list({(p, f): (w, p, f, "split") for w, p, f in found if _quantified(p)}.values())


def _quantified(pattern: str) -> bool:
    """False for a pattern without repetition (``\\nclass ``): it cannot backtrack, so skip it."""
    return any(ch in pattern for ch in "*+?{")


ATOMS = [" ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "#", ":", "`", "*", "_", "-", "=", "[", "]", "(",
         ")", "{", "}", "<", ">", "|", "\\", "'", '"', ".", ",", ";", "a", "1", "a ", "1,", "1 , ", "[1", "# ",
         ": ", "* ", "_ ", "``", "[]", "{}", "<a>", "\\n", "ab\n", "\n\n"]
PREFIXES = ["#", "# a", "###### a", "title: a", "---\ntitle: ", "[1", "{", "- ", "def ", "public ", "create ",
            "bearer ", "dapi", "# COMMAND -", "-- MAGIC ", "standalone query:", "maximum", "=\n"]
DANGEROUS = [" ", "\n", "#", "1 , ", "a", "public\n"]
SIZE = 50_000


def adversarial_inputs() -> list[tuple[str, list]]:
    inputs = [(f"{atom!r}*", ["repeat", "", atom, SIZE, "!"]) for atom in ATOMS]
    inputs += [(f"{prefix!r}+{atom!r}*", ["repeat", prefix, atom, SIZE, "b!"]) for prefix in PREFIXES for atom in DANGEROUS]
    return [(f"{i}:{label}", spec) for i, (label, spec) in enumerate(inputs)]


def _case_id(where: str, label: str) -> str:
    return "".join("_" if ch.isspace() else ch for ch in f"{where}|{label}")


def test_the_harness_finds_the_project_regexes() -> None:
    patterns = {pattern for _, pattern, _, _ in project_regexes()}
    assert any("title:" in p for p in patterns) and any("COMMAND" in p for _, p, _, _ in runtime_regexes())
    assert len(patterns) >= 15  # markup, notebooks, split, pdf, lexical, agent/...


@pytest.mark.parametrize("group", ["project", "runtime"])
def test_every_regex_survives_long_adversarial_lines(group: str) -> None:
    regexes = project_regexes() if group == "project" else runtime_regexes()
    cases = [
        {"id": _case_id(f"{n}:{where}", label), "kind": "regex", "pattern": pattern, "flags": flags, "use": use,
         "input": spec}
        for n, (where, pattern, flags, use) in enumerate(regexes)
        for label, spec in adversarial_inputs()
    ]
    times = run_cases(cases, per_case=5)  # a linear pattern needs milliseconds; a quadratic one, minutes
    assert len(times) == len(cases)


def test_text_functions_survive_long_adversarial_lines() -> None:
    targets = {"ingest.formats.markup.heading_text": [], "ingest.formats.markup.front_matter_title": [],
               "ingest.store.lexical.tokenize": [], "ingest.formats.pdf._clean": [], "agent.rag.chain.cited_numbers": [],
               "agent.evaluation.evaluate.parse_judgement": [], "agent.rag.service.clean_query": ["fallback"]}
    cases = [
        {"id": _case_id(target, label), "kind": "call", "target": target, "args": args, "input": spec}
        for target, args in targets.items()
        for label, spec in adversarial_inputs()[::3]
    ]
    run_cases(cases, per_case=5)
