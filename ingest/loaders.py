"""Find documents under the ingested paths and turn each file into a ``LoadedDocument``.

Discovery walks folders without following symlinks: a symlinked file inside the folder is read, a
symlink that loops, dangles, or points outside the folder is reported as skipped (so is a symlinked
folder, whose files are indexed at their real path). Hidden files and folders (``.git``, ``.env``),
``__pycache__``, ``node_modules`` and editor/Office lock files are ignored silently. Files of an
unsupported type are reported. Loading checks the size cap before reading a byte.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingest.documents import (  # re-exported: the public shapes of this module
    DEFAULT_MAX_FILE_BYTES,
    LoadedDocument,
    Section,
    SkipFile,
    Skipped,
    SourceFile,
)
from ingest.errors import UsageError
from ingest.formats.code import LANGUAGES, NAMED, load_code
from ingest.formats.markup import load_markdown, load_rst, load_text
from ingest.formats.notebooks import load_ipynb
from ingest.formats.office import load_docx
from ingest.formats.pdf import load_pdf
from ingest.formats.tabular import load_csv, load_json, load_jsonl
from ingest.formats.web import html_to_markdown, load_html
from ingest.textio import read_text, size_cap_reason

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "LOADERS", "Discovery", "LoadedDocument", "Scope", "Section", "SkipFile", "Skipped",
    "SourceFile", "discover", "html_to_markdown", "load", "loader_for", "read_text",
]

Loader = Callable[[SourceFile, int], LoadedDocument]

LOADERS: dict[str, Loader] = {
    ".md": load_markdown, ".markdown": load_markdown, ".mdx": load_markdown,
    ".txt": load_text, ".text": load_text, ".log": load_text,
    ".rst": load_rst,
    ".html": load_html, ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".csv": load_csv, ".tsv": load_csv,
    ".json": load_json, ".jsonl": load_jsonl, ".ndjson": load_jsonl,
    ".ipynb": load_ipynb,
    **{suffix: load_code for suffix in LANGUAGES},
}
IGNORED_NAMES = frozenset({"__pycache__", "node_modules"})


def loader_for(path: Path) -> Loader | None:
    suffix = path.suffix.lower()
    if suffix in LOADERS:
        return LOADERS[suffix]
    if path.name.lower() in NAMED:
        return load_code
    if not suffix:  # README, LICENSE, NOTES...: read as text if it decodes as text
        return load_text
    return None


def ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES or name.startswith("~$") or name.endswith("~")


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Scope:
    """What one argument of ``kb ingest`` covers: a whole root, a folder in it, or one file."""

    root: Path
    prefix: str = ""  # "" = the whole root; else a folder or file path relative to the root
    is_file: bool = False

    def covers(self, source: str) -> bool:
        if self.is_file:
            return source == self.prefix
        return not self.prefix or source.startswith(self.prefix + "/")


@dataclass
class Discovery:
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)

    @property
    def roots(self) -> list[Path]:
        return sorted({scope.root for scope in self.scopes})


def discover(paths: Iterable[Path], *, known_roots: Iterable[Path] = (), exclude: Iterable[Path] = ()) -> Discovery:
    """Every supported file under ``paths`` (folders are walked, files taken as they are).

    A path inside a root already in the index keeps that root, so ``kb ingest docs/hr`` after
    ``kb ingest docs`` updates the same documents instead of indexing them a second time.
    """
    known = sorted({Path(r) for r in known_roots}, key=lambda r: len(r.parts))
    excluded = [Path(e).resolve() for e in exclude]
    found = Discovery()
    seen: set[tuple[Path, str]] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or folder: {given}")
        resolved = path.resolve()
        root = next((r for r in known if resolved == r or resolved.is_relative_to(r)), None)
        if resolved.is_dir():
            root = root or resolved
            prefix = resolved.relative_to(root).as_posix()
            found.scopes.append(Scope(root, "" if prefix == "." else prefix))
            entries: Iterable[tuple[Path, str | None]] = _walk(root, resolved, excluded, found.skipped)
        elif resolved.is_file():
            root = root or resolved.parent
            found.scopes.append(Scope(root, resolved.relative_to(root).as_posix(), is_file=True))
            entries = [(resolved, None)]
        else:
            raise UsageError(f"not a regular file or folder: {given}")
        for file, problem in entries:
            source = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
            if (root, source) in seen:
                continue
            seen.add((root, source))
            if problem is None and not _utf8(source):
                problem = "file name is not valid UTF-8: not indexed (rename it)"
            if problem:
                found.skipped.append(Skipped(report_name(source), problem))
            elif loader_for(file) is None:
                found.skipped.append(Skipped(source, f"unsupported file type '{file.suffix}'"))
            else:
                found.files.append(SourceFile(root=root, path=file, source=source))
    found.files.sort(key=lambda f: (str(f.root), f.source))
    return found


def _walk(root: Path, start: Path, excluded: list[Path], skipped: list[Skipped]) -> Iterator[tuple[Path, str | None]]:
    """(path, problem) for every candidate file under ``start``; ``problem`` is a skip reason.

    Nothing one entry does stops the walk: a name that is not UTF-8 (it could not be stored or
    printed), a path longer than the OS allows, an entry that vanishes or cannot be read is
    reported with its reason and the walk goes on with the next one.
    """

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename or start)
        source = where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
        skipped.append(Skipped(report_name(source) + "/", f"cannot read folder: {os_reason(exc)}"))

    for dirpath, dirnames, filenames in os.walk(start, onerror=unreadable):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            folder = here / name
            if ignored(name) or folder in excluded:
                continue
            if not _utf8(name):
                yield folder, "folder name is not valid UTF-8: not indexed (rename it)"
                continue
            try:
                if folder.is_symlink():
                    problem = _symlink_problem(folder, root)
                    yield folder, problem or "symlink to a folder: not followed (its files are indexed at their real path)"
                    continue
            except OSError as exc:
                yield folder, f"cannot read folder: {os_reason(exc)}"
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if ignored(name):
                continue
            file = here / name
            if not _utf8(name):
                yield file, "file name is not valid UTF-8: not indexed (rename it)"
                continue
            try:
                if file.is_symlink():
                    problem = _symlink_problem(file, root)
                    if problem:
                        yield file, problem
                        continue
                mode = file.stat().st_mode
            except OSError as exc:
                yield file, f"cannot read: {os_reason(exc)}"
                continue
            if stat.S_ISDIR(mode):
                yield file, "symlink to a folder: not followed (its files are indexed at their real path)"
            elif not stat.S_ISREG(mode):
                yield file, "not a regular file (device, socket or pipe)"
            else:
                yield file, None


def _utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def report_name(source: str, limit: int = 300) -> str:
    """``source`` as it can be printed and stored: undecodable bytes as ``\\xff``, a path longer
    than ``limit`` shortened in the middle."""
    text = source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(text) > limit:
        text = f"{text[: limit // 2]}...{text[-(limit // 2) :]}"
    return text


def os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long for the operating system (File name too long)"
    return exc.strerror or str(exc)


def _symlink_problem(link: Path, root: Path) -> str | None:
    """Why a symlink is not followed, or None when it points at something inside the root."""
    try:
        target = link.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"broken symlink (its target {os.readlink(link)} does not exist)"
    if link.parent.resolve().is_relative_to(target):
        return f"symlink loop (points to {'the folder' if target == root else 'a folder'} containing it)"
    if not target.is_relative_to(root):
        return f"symlink points outside the folder (to {target})"
    return None


# ---------------------------------------------------------------- loading


def load(file: SourceFile, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, memory_mb: int | None = None) -> LoadedDocument:
    """Load one file; raises ``SkipFile`` with a reason when it cannot be indexed.

    ``memory_mb`` only names the limit in the reason when parsing runs out of memory (the limit
    itself is set by ``ingest.sync.isolation``'s worker process).
    """
    loader = loader_for(file.path)
    if loader is None:
        raise SkipFile(f"unsupported file type '{file.path.suffix}'")
    try:
        size = file.path.stat().st_size
    except OSError as exc:
        raise SkipFile(f"cannot read: {os_reason(exc)}") from None
    if size > max_bytes:
        raise SkipFile(size_cap_reason(size, max_bytes))
    if size == 0:
        raise SkipFile("empty file")
    try:
        document = loader(file, max_bytes)
    except SkipFile:
        raise
    except OSError as exc:
        raise SkipFile(f"cannot read: {exc.strerror or exc}") from None
    except MemoryError:
        limit = f" (KB_PARSE_MEMORY_MB={memory_mb})" if memory_mb else ""
        raise SkipFile(f"parsing needs more memory than allowed{limit}") from None
    except RecursionError as exc:
        raise SkipFile(f"too complex to parse ({type(exc).__name__})") from None
    except Exception as exc:  # a parser bug on one odd file must not stop the whole run
        detail = " ".join(str(exc).split())[:100]
        raise SkipFile(f"could not be parsed ({type(exc).__name__}{': ' + detail if detail else ''})") from None
    if not any(section.text.strip() for section in document.sections):
        raise SkipFile("no extractable text" if document.kind == "pdf" else "no text to index (only whitespace or empty structure)")
    return document
