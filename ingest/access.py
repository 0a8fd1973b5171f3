"""Who may read what: the access rules stored with the documents, and the labels kb ingest puts on chunks.

Rules live with the documents, in a ``.kb-access`` file at the root of an ingested folder::

    # GLOB: group, group          (paths relative to this folder; the last matching rule wins)
    **: *                         # everyone (``*`` as a group)
    hr/**: hr, hr-admins
    legal/contracts/*.md: legal

- ``*`` matches within one folder level, ``**`` across folders (``hr/**`` is everything under
  ``hr/``; ``**/secret.md`` is ``secret.md`` in any folder, the top one included), ``?`` one
  character; a glob without ``/`` matches only at the top (``*.md``) unless written ``**/*.md``;
- a Markdown document's front matter ``access: [group, ...]`` (or ``access: group, group``) wins over
  the file for that document;
- a document no rule covers is readable by everyone (``*``), or by no one when
  ``KB_ACCESS_DEFAULT=none`` (the label ``!nobody``, which no caller has).

Every chunk stores its document's readers in its metadata as a list, ``access: ["hr", "hr-admins"]``
(``["*"]`` for everyone), and ``access_labelled: true``; ``ingest.store.base.Filter.readable_by``
selects the chunks a caller may read inside the store query. A chunk or record without labels was
indexed before kb had access control, when no rule could apply: it reads as everyone's until the next
``kb ingest`` labels it (without re-embedding). Group names: letters, digits and ``_ . @ + -`` (at most 128 characters).

Everything here is bounded: the rules file is read up to ``MAX_RULES_BYTES`` with at most
``MAX_RULES`` rules and ``MAX_GROUPS`` groups a rule; front matter is looked for in the first
``FRONT_MATTER_BYTES`` of a Markdown file, line by line (no backtracking regex).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import KbError

ACCESS_FILE = ".kb-access"
ACCESS_KEY = "access"  # the chunk metadata key: a list of groups
LABELLED_KEY = "access_labelled"  # True on every labelled chunk: lets a Chroma ``where`` find unlabelled ones
PUBLIC = "*"  # as a group: everyone
NOBODY = "!nobody"  # the label of a document no one may read (KB_ACCESS_DEFAULT=none, no rule); never a caller's group
DEFAULTS = ("all", "none")
MAX_RULES_BYTES = 256 * 1024
MAX_RULES = 5000
MAX_GROUPS = 64
MAX_GLOB_CHARS = 1000
FRONT_MATTER_BYTES = 16 * 1024
FRONT_MATTER_SUFFIXES = (".md", ".markdown")
_GROUP = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")


class AccessRulesError(KbError):
    """A ``.kb-access`` file or a group list that cannot be read as rules."""


def check_group(name: str, where: str = "") -> str:
    name = name.strip()
    if name == PUBLIC or _GROUP.fullmatch(name):
        return name
    shown = name if len(name) <= 40 and name.isprintable() else repr(name[:40])
    raise AccessRulesError(
        f"{where}invalid group name {shown!s}: use letters, digits and _ . @ + - (or * for everyone)"
    )


def parse_groups(text: str, *, where: str = "") -> frozenset[str]:
    """``"hr, legal"`` or ``"hr|legal"`` -> ``{"hr", "legal"}``; empty text -> no group."""
    parts = [p for p in re.split(r"[,|]", text or "") if p.strip()]
    if len(parts) > MAX_GROUPS:
        raise AccessRulesError(f"{where}more than {MAX_GROUPS} groups")
    return frozenset(check_group(part, where) for part in parts)


def readable_by(groups: Iterable[str] | None) -> frozenset[str] | None:
    """The labels a caller with ``groups`` may read: theirs plus everyone's (``None``: no restriction)."""
    if groups is None:
        return None
    return frozenset(g for g in groups if g != NOBODY) | {PUBLIC}


def can_read(labels: Iterable[str] | None, groups: Iterable[str] | None) -> bool:
    """Whether a document labelled ``labels`` is readable by a caller with ``groups`` (``None``: anyone).
    A document without labels (``None``: recorded before kb had access control) is everyone's."""
    allowed = readable_by(groups)
    if allowed is None or labels is None:
        return True
    return bool(set(labels or ()) & allowed)


# ---------------------------------------------------------------- globs


def glob_regex(glob: str) -> re.Pattern[str]:
    """A ``.kb-access`` glob as a regular expression over ``/``-separated relative paths."""
    glob = glob.strip().lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append(r"(?:[^/]*/)*")  # zero or more folders
            i += 3
        elif glob.startswith("**", i):
            out.append(r".*")
            i += 2
        elif glob[i] == "*":
            out.append(r"[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append(r"[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Rule:
    glob: str
    groups: tuple[str, ...]
    line: int
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, source: str) -> bool:
        return self.pattern.match(source) is not None or (
            self.glob.endswith("/") and source.startswith(self.glob.lstrip("/"))
        )


@dataclass(frozen=True)
class Rules:
    """The rules of one ingested folder (empty: there is no ``.kb-access``)."""

    rules: tuple[Rule, ...] = ()
    default: str = "all"

    def groups_for(self, source: str) -> tuple[str, ...] | None:
        """The groups of the last rule matching ``source``; ``None`` when no rule does."""
        for rule in reversed(self.rules):
            if rule.matches(source):
                return rule.groups
        return None

    def labels(self, source: str, front: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The chunk label of a document: its front matter's groups, else the last matching rule's,
        else everyone (``KB_ACCESS_DEFAULT=all``) or no one (``none``)."""
        groups = front if front is not None else self.groups_for(source)
        if groups is None:
            groups = (PUBLIC,) if self.default != "none" else (NOBODY,)
        return normalise(groups)


def normalise(groups: Iterable[str]) -> tuple[str, ...]:
    """Sorted, unique; ``*`` alone when everyone may read; ``!nobody`` when no group is left."""
    unique = sorted(set(groups))
    if PUBLIC in unique:
        return (PUBLIC,)
    return tuple(unique) or (NOBODY,)


def parse_rules(text: str, *, where: str = ACCESS_FILE, default: str = "all") -> Rules:
    """The rules in the text of a ``.kb-access`` file; ``AccessRulesError`` names the bad line."""
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        glob, sep, groups = line.rpartition(":")
        if not sep or not glob.strip():
            raise AccessRulesError(f"{where} line {number}: expected 'GLOB: group, group'",
                                   hint="one rule a line; '*' as a group means everyone; '#' starts a comment")
        if len(glob) > MAX_GLOB_CHARS:
            raise AccessRulesError(f"{where} line {number}: the glob is longer than {MAX_GLOB_CHARS} characters")
        names = parse_groups(groups, where=f"{where} line {number}: ")
        rules.append(Rule(glob.strip(), normalise(names) if names else (NOBODY,), number, glob_regex(glob)))
        if len(rules) > MAX_RULES:
            raise AccessRulesError(f"{where}: more than {MAX_RULES} rules")
    return Rules(tuple(rules), default)


def load_rules(root: Path, default: str = "all") -> Rules:
    """The rules of the folder ``root`` (no ``.kb-access``: no rules, only the default)."""
    if default not in DEFAULTS:
        raise AccessRulesError(f"KB_ACCESS_DEFAULT must be one of {', '.join(DEFAULTS)}, not {default!r}")
    path = Path(root) / ACCESS_FILE
    try:
        if not path.is_file():
            return Rules((), default)
        with path.open("rb") as handle:
            data = handle.read(MAX_RULES_BYTES + 1)
    except OSError as exc:
        raise AccessRulesError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_RULES_BYTES:
        raise AccessRulesError(f"{path} is larger than {MAX_RULES_BYTES // 1024} KB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AccessRulesError(f"{path} is not UTF-8 text") from None
    return parse_rules(text, where=str(path), default=default)


# ---------------------------------------------------------------- front matter


def front_matter_access(path: Path) -> tuple[str, ...] | None:
    """The ``access:`` groups in a Markdown file's YAML front matter (``None``: none given).

    ``access: [hr, legal]``, ``access: hr, legal`` and a block list (``access:`` then ``- hr`` lines)
    are understood; a malformed value is an ``AccessRulesError`` naming the file (better a failed
    ingest than a document readable by the wrong people)."""
    if path.suffix.lower() not in FRONT_MATTER_SUFFIXES:
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(FRONT_MATTER_BYTES)
    except OSError:
        return None  # the loader reports unreadable files
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    value: str | None = None
    block: list[str] | None = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped in ("---", "..."):
            break
        if block is not None:
            if stripped.startswith("- "):
                block.append(stripped[2:].strip().strip("\"'"))
                continue
            break
        key, sep, rest = line.partition(":")
        if sep and key.strip().lower() == "access" and not line[:1].isspace():
            rest = rest.split("#", 1)[0].strip()
            if rest:
                value = rest
                break
            block = []
    else:
        return None  # no closing line within the head: not front matter
    if block is not None:
        value = ",".join(block)
    if value is None:
        return None
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    names = [part.strip().strip("\"'") for part in value.split(",") if part.strip().strip("\"'")]
    groups = parse_groups(",".join(names), where=f"{path} front matter 'access': ")
    return normalise(groups)
