"""Source code and configuration: one section per top-level function or class for Python (via
``ast``), the language-aware splitter elsewhere. Databricks source notebooks are recognised by
their header and split by cell instead."""

from __future__ import annotations

import ast
from pathlib import Path

from ingest.documents import LoadedDocument, Section, SourceFile
from ingest.formats.notebooks import is_databricks_source, load_databricks_source
from ingest.textio import read_text

# suffix -> language name (``ingest.split`` picks separators by this name)
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".sql": "sql", ".sh": "bash", ".bash": "bash", ".zsh": "bash",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".conf": "ini",
    ".js": "js", ".mjs": "js", ".cjs": "js", ".jsx": "js", ".ts": "ts", ".tsx": "ts",
    ".java": "java", ".scala": "scala", ".kt": "kotlin", ".kts": "kotlin", ".go": "go", ".rs": "rust",
    ".rb": "ruby", ".php": "php", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".hpp": "cpp",
    ".cs": "csharp", ".swift": "swift", ".r": "r", ".lua": "lua", ".pl": "perl", ".ps1": "powershell",
    ".tf": "hcl", ".hcl": "hcl", ".proto": "proto", ".gradle": "groovy", ".groovy": "groovy",
}
# files known by name rather than suffix
NAMED = {"dockerfile": "dockerfile", "makefile": "make", "jenkinsfile": "groovy", "justfile": "make"}
_NOTEBOOK_LANGUAGES = ("python", "sql", "scala", "r")


def language_for(path: Path) -> str | None:
    return LANGUAGES.get(path.suffix.lower()) or NAMED.get(path.name.lower())


def load_code(file: SourceFile, max_bytes: int) -> LoadedDocument:
    text = read_text(file.path, max_bytes)
    language = language_for(file.path) or "text"
    if language in _NOTEBOOK_LANGUAGES and is_databricks_source(text):
        return load_databricks_source(file, text, language)
    sections = python_sections(text) if language == "python" else [Section(text)]
    return LoadedDocument(file.source, file.path.name, "code", sections, language=language)


def python_sections(text: str) -> list[Section]:
    """Module-level code, then each top-level ``def``/``class`` (with its decorators and the comment
    block right above it) as its own section; unparsable files stay one section."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [Section(text)]
    lines = text.splitlines(keepends=True)
    sections: list[Section] = []
    done = 0  # lines consumed so far

    def module_part(until: int) -> None:
        part = "".join(lines[done:until])
        if part.strip():
            sections.append(Section(part.strip("\n")))

    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        while start > done and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        end = node.end_lineno or node.lineno
        module_part(start)
        kind = "class" if isinstance(node, ast.ClassDef) else "def"
        sections.append(Section("".join(lines[start:end]).strip("\n"), heading=f"{kind} {node.name}"))
        done = end
    module_part(len(lines))
    return sections or [Section(text)]
