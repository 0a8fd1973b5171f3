"""``kb``: the command line. Only wiring: settings in, library calls, Rich output.

Heavy libraries (LangChain, Chroma, torch) are imported inside the commands, so ``kb --help``
starts instantly. Every KbError becomes one ``error: ...`` line on stderr and its exit code.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from agent import __version__

app = typer.Typer(
    name="kb",
    help="Ask your company's documents: a local Chroma index + an LLM on Databricks Model Serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: BaseException) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(getattr(exc, "exit_code", 1))


def handle_errors(command):
    """Turn the project's errors (and Ctrl-C) into one clear line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from agent.errors import KbError

        try:
            return command(*args, **kwargs)
        except KbError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"kb {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """kb: answers over internal documents with a Databricks-served LLM."""


def _settings():
    from agent.settings import load_settings

    return load_settings()


# ---------------------------------------------------------------- ingest


@app.command()
@handle_errors
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (default: KB_KNOWLEDGE_DIR).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop the index and build it from scratch.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail if any file is skipped.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index documents (.md, .txt, .pdf, .html) into the local Chroma index, incrementally."""
    from agent.errors import IngestError
    from agent.retrieval import build_embeddings
    from ingest.sync import ingest as run_ingest

    settings = _settings()
    targets = paths or [settings.knowledge_dir]
    embeddings = None if dry_run else build_embeddings(settings, command="ingest")
    with _progress(enabled=not as_json and not dry_run) as progress:
        summary = run_ingest(
            targets, settings.index_dir, embeddings, dry_run=dry_run, rebuild=rebuild, progress=progress
        )
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_ingest_summary(summary, targets, settings.index_dir)
    indexed = summary.added + summary.changed + summary.unchanged
    if summary.skipped and indexed == 0:
        raise IngestError(f"nothing could be indexed: all {len(summary.skipped)} files were skipped")
    if strict and summary.skipped:
        raise IngestError(f"{len(summary.skipped)} file(s) skipped and --strict is set")


class _progress:
    """A Rich progress bar fed by the ingest's (done, total) callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err.is_terminal
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("embedding chunks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        )
        self._bar.start()
        return self.update

    def update(self, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._bar.add_task("embed", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def _print_ingest_summary(summary: Any, targets: list[Path], index_dir: Path) -> None:
    verb = "Would index" if summary.dry_run else "Indexed"
    where = ", ".join(str(t) for t in targets)
    out.print(
        f"{verb} {escape(where)}: {summary.added} added, {summary.changed} changed, "
        f"{summary.unchanged} unchanged, {summary.deleted} deleted, {len(summary.skipped)} skipped"
    )
    if summary.dry_run:
        out.print(f"chunks to embed: {summary.chunks_embedded}, chunks to delete: {summary.chunks_deleted} (nothing written)")
    else:
        out.print(
            f"chunks embedded: {summary.chunks_embedded}, deleted: {summary.chunks_deleted}; "
            f"{summary.chunks_total} chunks in {escape(str(index_dir))}"
        )
    for skipped in summary.skipped:
        err.print(f"[yellow]skipped[/] {escape(skipped.source)}: {escape(skipped.reason)}")


# ---------------------------------------------------------------- search


@app.command()
@handle_errors
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many passages.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find the passages closest to QUERY. Needs no LLM and no network."""
    from agent.retrieval import build_retriever, search_json

    settings = _settings()
    documents = build_retriever(settings, k=k).invoke(query)
    if as_json:
        print(json.dumps(search_json(query, documents), indent=2, ensure_ascii=False))
    else:
        _print_passages(documents)


def _print_passages(documents: list[Any]) -> None:
    from rich.panel import Panel

    if not documents:
        out.print("no passages found")
    for rank, document in enumerate(documents, 1):
        meta = document.metadata
        where = meta.get("section") or (f"page {meta['page']}" if meta.get("page") else "")
        title = f"[{rank}] {meta.get('source')} · {meta.get('title', '')}" + (f" · {where}" if where else "")
        subtitle = f"score {meta.get('score', 0):.3f}"
        out.print(Panel(escape(document.page_content), title=escape(title), title_align="left", subtitle=subtitle))


# ---------------------------------------------------------------- ask


@app.command()
@handle_errors
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many passages to give the model.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of streaming.")] = False,
) -> None:
    """Answer QUESTION from the indexed documents with numbered citations, streamed."""
    from agent.answer import run_answer
    from agent.chain import build_rag_chain
    from agent.errors import StreamInterruptedError
    from agent.retrieval import build_retriever, search_json

    settings = _settings()
    retriever = build_retriever(settings, k=k, command="ask")
    if not settings.llm_configured:
        missing = " and ".join(settings.missing_llm_settings())
        notice = f"no Databricks model configured: set {missing} to get answers; showing the retrieved passages instead"
        documents = retriever.invoke(question)
        if as_json:
            data = search_json(question, documents)
            print(json.dumps({"question": question, "answer": None, "error": notice, "sources": [],
                              "usage": {}, "passages": data["results"]}, indent=2, ensure_ascii=False))
        else:
            err.print(f"[yellow]note:[/] {escape(notice)}")
            _print_passages(documents)
        return

    chain = build_rag_chain(settings, retriever=retriever)
    on_token = None if as_json else _write
    try:
        result = run_answer(
            chain, question, on_token=on_token, endpoint=settings.chat_endpoint, base_url=settings.serving_base_url
        )
    except StreamInterruptedError as exc:
        if not as_json:
            _write("\n")
        else:
            print(json.dumps({"question": question, "answer": exc.partial, "partial": True, "error": str(exc)}, indent=2))
        err.print(f"[bold red]error:[/] {escape(str(exc))} (the answer above is incomplete)")
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return
    _write("\n")
    sources = result.sources
    if sources:
        out.print("\n[bold]Sources[/]")
        for item in sources:
            where = item.get("section") or (f"page {item['page']}" if item.get("page") else "")
            line = f"  [{item['n']}] {item['source'] or '?'} · {item.get('title') or ''}" + (f" · {where}" if where else "")
            out.print(escape(line))
    else:
        out.print("\n[dim](the answer cites no passage)[/]")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
