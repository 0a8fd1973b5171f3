"""The assistant's tools over the knowledge base, as LangChain tools.

    tools = build_tools(KnowledgeBase(retriever=retriever, index_dir=settings.index_dir))

- ``search_knowledge(query, k)``: numbered passages with sources;
- ``read_document(source, start)``: the text of one ingested document, confined to the ingested roots
  (no ``..``, absolute paths, symlinks leading out, or files the index has no record of), in parts of
  at most ``MAX_DOCUMENT_CHARS`` characters;
- ``list_documents(filter)``: what is indexed, with titles;
- ``calculate(expression)``: arithmetic through ``ast`` (never ``eval``), every operation bounded, run in a
  worker process under a time limit (``agent.assistant.calculator``).

Access control: a ``KnowledgeBase`` with ``groups`` searches, lists and reads only what those groups
may read (``ingest.access``); a document they may not read is "not an indexed document", exactly like
a name that was never ingested, and is never counted.

Everything a document says reaches the model escaped and delimited (``agent.rag.prompts``). Passages
and documents are numbered across a whole conversation by a ``SourceRegistry`` so ``[n]`` in the
answer maps back to one source; each tool result carries its sources and a one-line summary as the
ToolMessage ``artifact``. Expected failures are ``ToolException``s: the model gets ``error: ...``
as the tool result and can correct itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, ToolException, tool
from langgraph.prebuilt import ToolRuntime
from pydantic import Field

from agent.assistant.calculator import (  # noqa: F401 - the bounded evaluator and its worker; re-exported here
    MAX_EXPRESSION_CHARS,
    MAX_RESULT_DIGITS,
    CalculationError,
    calculate_expression,
    format_number,
)
from agent.assistant.calculator import calculate as calculate_in_worker
from agent.rag.chain import cited_numbers
from agent.rag.prompts import (
    TOOL_DESCRIPTIONS,
    format_document,
    format_document_list,
    format_numbered_passages,
)
from ingest.access import can_read
from ingest.loaders import SkipFile, SourceFile, load
from ingest.sync.records import Records

MAX_K = 20
MAX_DOCUMENT_CHARS = 20_000  # per read_document call; the model pages on with ``start``
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024  # files larger than this are not read at all
MAX_LISTED = 200


# ---------------------------------------------------------------- numbering of sources


class SourceRegistry:
    """Numbers passages and documents for citation; the same chunk or document keeps its number.

    Thread-safe (parallel tool calls share one registry per run). Seed it from earlier messages
    (``from_messages``) so numbers stay unique across the turns of a conversation.
    """

    def __init__(self, refs: Iterable[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._by_n: dict[int, dict[str, Any]] = {}
        self._by_key: dict[str, int] = {}
        for ref in refs:
            self._remember(dict(ref))

    @classmethod
    def from_messages(cls, messages: Sequence[BaseMessage]) -> SourceRegistry:
        refs = []
        for message in messages:
            artifact = getattr(message, "artifact", None) if isinstance(message, ToolMessage) else None
            if isinstance(artifact, dict):
                refs.extend(r for r in artifact.get("sources") or [] if isinstance(r, dict) and "n" in r)
        return cls(refs)

    def _remember(self, ref: dict[str, Any]) -> None:
        self._by_n[int(ref["n"])] = ref
        if ref.get("key"):
            self._by_key[str(ref["key"])] = int(ref["n"])

    def add(self, key: str, **fields: Any) -> dict[str, Any]:
        """The reference for ``key``, numbered on first sight: ``{"n", "key", **fields}``."""
        with self._lock:
            if key in self._by_key:
                return self._by_n[self._by_key[key]]
            ref = {"n": max(self._by_n, default=0) + 1, "key": key, **{k: v for k, v in fields.items() if v}}
            self._remember(ref)
            return ref

    def get(self, n: int) -> dict[str, Any] | None:
        return self._by_n.get(n)

    def all(self) -> list[dict[str, Any]]:
        return [self._by_n[n] for n in sorted(self._by_n)]

    def cited(self, answer: str) -> list[dict[str, Any]]:
        """The sources an answer cites as ``[n]``: ``[{"n", "source", "title", ...}]``, unknown numbers ignored."""

        sources = []
        for n in cited_numbers(answer):
            ref = self._by_n.get(n)
            if ref:
                sources.append(public_ref(ref))
        return sources


def public_ref(ref: dict[str, Any]) -> dict[str, Any]:
    """A reference without internal keys: n, source, title, and section/page when known."""
    item = {"n": ref["n"], "source": ref.get("source"), "title": ref.get("title")}
    for extra in ("section", "page"):
        if ref.get(extra):
            item[extra] = ref[extra]
    return item


@dataclass
class AssistantContext:
    """Per-run context handed to the agent graph (``context=``): the citation registry."""

    registry: SourceRegistry = field(default_factory=SourceRegistry)


def _registry(runtime: ToolRuntime | None) -> SourceRegistry:
    context = getattr(runtime, "context", None)
    if isinstance(context, AssistantContext):
        return context.registry
    # Invoked without a context (say a notebook calling the graph directly): number from the history.
    state = getattr(runtime, "state", None) or {}
    messages = state.get("messages", []) if isinstance(state, dict) else []
    return SourceRegistry.from_messages(messages)


# ---------------------------------------------------------------- the knowledge base the tools read


@dataclass
class KnowledgeBase:
    """What the tools need: a retriever (``invoke(query, k=...)``) and the index folder's records;
    ``groups``: the caller's (what it may read; ``None``: everything)."""

    retriever: Any
    index_dir: Path
    default_k: int = 5
    groups: frozenset[str] | None = None

    def documents(self) -> list[dict[str, Any]]:
        """``[{"root", "source", "title", "chunks", "access"}]`` of the index's active collection that
        ``groups`` may read, from the ingest records; [] when nothing is indexed."""

        if not (Path(self.index_dir) / "records.sqlite").is_file():
            return []
        with closing(Records(Path(self.index_dir), read_only=True)) as records:  # never writes to the index
            found = records.documents()
        return [d for d in found if can_read(d.get("access"), self.groups)]

    def search(self, query: str, k: int) -> list[Document]:
        if self.groups is None:
            return list(self.retriever.invoke(query, k=k))
        return list(self.retriever.invoke(query, k=k, groups=self.groups))


# ---------------------------------------------------------------- read_document's confinement

_DRIVE = re.compile(r"^[A-Za-z]:")


def normalise_source(source: str) -> str:
    """A relative ``a/b.md`` path, or ``ToolException`` for absolute paths, ``..``, ``~`` and the like."""
    text = (source or "").strip()
    if not text:
        raise ToolException("error: give the source path of a document, as list_documents shows it")
    if "\x00" in text or any(ord(c) < 32 for c in text):
        raise ToolException("error: the source path contains control characters")
    if text.startswith(("/", "\\", "~")) or _DRIVE.match(text) or PurePosixPath(text).is_absolute():
        raise ToolException("error: absolute paths are not allowed; give a source path as list_documents shows it")
    parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
    if ".." in parts:
        raise ToolException("error: '..' is not allowed in a source path; only indexed documents can be read")
    if not parts:
        raise ToolException("error: give the source path of a document, as list_documents shows it")
    return "/".join(parts)


def resolve_document(kb: KnowledgeBase, source: str) -> tuple[dict[str, Any], Path]:
    """The record and the real path of an ingested document, refusing anything outside the ingested roots."""
    wanted = normalise_source(source)
    matches = [d for d in kb.documents() if d["source"] == wanted]
    if not matches:
        raise ToolException(
            f"error: '{wanted}' is not an indexed document; use list_documents or search_knowledge to find sources"
        )
    record = matches[0]
    root = Path(record["root"])
    try:
        real_root = root.resolve(strict=True)
        real = (root / wanted).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ToolException(f"error: '{wanted}' was indexed but is no longer on disk") from None
    if not real.is_relative_to(real_root):
        raise ToolException(f"error: '{wanted}' leads outside the indexed folder (a symlink); it cannot be read")
    if not real.is_file():
        raise ToolException(f"error: '{wanted}' is not a file")
    return record, real


# ---------------------------------------------------------------- the tools


def _summary(content: str, sources: list[dict[str, Any]], summary: str) -> tuple[str, dict[str, Any]]:
    return content, {"summary": summary, "sources": sources}


def _sources_line(refs: list[dict[str, Any]]) -> str:
    names: list[str] = []
    for ref in refs:
        if ref.get("source") not in names:
            names.append(str(ref.get("source")))
    numbers = ", ".join(f"[{r['n']}]" for r in refs)
    return f"{numbers} from {', '.join(names)}"


def build_tools(kb: KnowledgeBase) -> list[BaseTool]:
    """The four tools bound to one knowledge base."""

    @tool("search_knowledge", description=TOOL_DESCRIPTIONS["search_knowledge"], response_format="content_and_artifact")
    def search_knowledge(
        query: Annotated[str, Field(description="What to look for, in words likely to appear in the documents.")],
        runtime: ToolRuntime,
        k: Annotated[int, Field(description="How many passages to return (1 to 20).")] = kb.default_k,
    ) -> tuple[str, dict[str, Any]]:
        if not query or not query.strip():
            raise ToolException("error: the query is empty")
        k = max(1, min(MAX_K, int(k)))
        documents: list[Document] = kb.search(query, k)
        registry = _registry(runtime)
        items: list[tuple[int, Document]] = []
        refs: list[dict[str, Any]] = []
        for document in documents:
            meta = document.metadata
            key = f"chunk:{document.id or ''}:{meta.get('root', '')}:{meta.get('source')}:{meta.get('chunk')}"
            ref = registry.add(
                key, kind="passage", source=meta.get("source"), title=meta.get("title"),
                section=meta.get("section"), page=meta.get("page"),
            )
            items.append((ref["n"], document))
            refs.append(ref)
        if not items:
            return _summary(format_numbered_passages([]), [], "no passages found")
        noun = "passage" if len(items) == 1 else "passages"
        return _summary(format_numbered_passages(items), refs, f"{len(items)} {noun}: {_sources_line(refs)}")

    @tool("read_document", description=TOOL_DESCRIPTIONS["read_document"], response_format="content_and_artifact")
    def read_document(
        source: Annotated[str, Field(description="The document's source path, e.g. hr/pto.md.")],
        runtime: ToolRuntime,
        start: Annotated[int, Field(description="Character offset to start from (0 for the beginning).")] = 0,
    ) -> tuple[str, dict[str, Any]]:
        record, real = resolve_document(kb, source)
        size = real.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise ToolException(f"error: '{record['source']}' is too large to read whole ({size / 1e6:.1f} MB); use search_knowledge")
        try:
            loaded = load(SourceFile(root=Path(record["root"]), path=real, source=record["source"]), max_bytes=MAX_DOCUMENT_BYTES)
        except SkipFile as exc:
            raise ToolException(f"error: '{record['source']}' cannot be read: {exc}") from None
        text = "\n\n".join(
            (f"[page {s.page}]\n" if s.page else "") + s.text.strip() for s in loaded.sections if s.text.strip()
        )
        start = max(0, int(start))
        if start >= len(text) and text:
            raise ToolException(f"error: start={start} is past the end of '{record['source']}' ({len(text)} characters)")
        part = text[start : start + MAX_DOCUMENT_CHARS]
        end = start + len(part)
        note = ""
        if start > 0 or end < len(text):
            note = f"characters {start}-{end} of {len(text)}"
            if end < len(text):
                note += f"; call read_document again with start={end} for more"
        ref = _registry(runtime).add(
            f"document:{record['root']}:{record['source']}", kind="document",
            source=record["source"], title=record.get("title") or loaded.title,
        )
        content = format_document(ref["n"], record["source"], str(ref.get("title") or ""), part, note=note)
        summary = f"[{ref['n']}] {record['source']} ({len(part):,} characters" + (f", {note.split(';')[0]}" if note else "") + ")"
        return _summary(content, [ref], summary)

    @tool("list_documents", description=TOOL_DESCRIPTIONS["list_documents"], response_format="content_and_artifact")
    def list_documents(
        filter: Annotated[str, Field(description="Text the source path or title must contain; empty for all.")] = "",
    ) -> tuple[str, dict[str, Any]]:
        rows = kb.documents()
        if not rows:
            raise ToolException("error: nothing is indexed yet")
        needle = (filter or "").strip().lower()
        matching = [r for r in rows if needle in r["source"].lower() or needle in str(r.get("title") or "").lower()]
        shown = matching[:MAX_LISTED]
        content = format_document_list(shown)
        if len(matching) > len(shown):
            content += f"\n({len(matching) - len(shown)} more not shown; use a filter)"
        what = f"{len(matching)} of {len(rows)} documents match '{filter}'" if needle else f"{len(rows)} documents"
        return _summary(content, [], what)

    @tool("calculate", description=TOOL_DESCRIPTIONS["calculate"], response_format="content_and_artifact")
    def calculate(
        expression: Annotated[str, Field(description="The arithmetic expression, e.g. (23 - 4) * 1.5")],
    ) -> tuple[str, dict[str, Any]]:
        try:
            value = format_number(calculate_in_worker(expression))
        except CalculationError as exc:
            raise ToolException(f"error: {exc}") from None
        return _summary(value, [], f"{expression.strip()} = {value}")

    tools = [search_knowledge, read_document, list_documents, calculate]
    for each in tools:
        each.handle_tool_error = True
    return tools
