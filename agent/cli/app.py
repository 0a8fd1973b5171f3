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
from agent.cli.status import adopt, pause_early, stderr_console, stop_all
from agent.errors import IngestError, KbError, StreamInterruptedError, UsageError, public_message  # public_message: secrets masked
from agent.observability.logs import configure_logging
from agent.observability.tracing import traced_command  # MLflow only when KB_MLFLOW_TRACKING_URI is set
from agent.terminal import clean, literal, markup
from ingest.store.folder import check_index_dir

app = typer.Typer(
    name="kb",
    help="Ask your company's documents: a local Chroma index + an LLM on Databricks Model Serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Typer's Rich help formatter costs ~0.1 s of every `kb --help`
)
# Untrusted text (documents, file names, answers) is printed through agent.terminal: no emoji
# codes on these consoles, markup escaped, terminal control sequences stripped.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = stderr_console()  # Console(stderr=True, highlight=False, soft_wrap=True, emoji=False), shared with the early status


def _fail(exc: BaseException) -> typer.Exit:
    stop_all()  # a status line is erased before the error line
    err.print(f"[bold red]error:[/] {markup(public_message(exc), line=True)}")
    return typer.Exit(getattr(exc, "exit_code", 1))


def handle_errors(command):
    """Turn the project's errors (and Ctrl-C) into one clear line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with traced_command(command.__name__.rstrip("_")):
                return command(*args, **kwargs)
        except KbError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt:
            stop_all()
            err.print("interrupted")
            raise typer.Exit(130) from None
        finally:
            stop_all()

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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each model call (tokens, latency) and HTTP request to stderr.")
    ] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Write logs as JSON lines (secrets redacted).")] = False,
) -> None:
    """kb: answers over internal documents with a Databricks-served LLM."""
    pause_early()  # the command's arguments are parsed next: a usage error must not share the status line
    _AS_GROUPS[0] = None
    configure_logging(verbose=verbose, json_format=log_json)


ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="Databricks config profile in ~/.databrickscfg (as DATABRICKS_CONFIG_PROFILE)."),
]


AsGroupsOption = Annotated[
    str | None,
    typer.Option("--as-groups", help="Read only what callers in these groups may read (g1,g2; as KB_AS_GROUPS).",
                 metavar="GROUPS"),
]


_AS_GROUPS: list[str | None] = [None]  # this invocation's --as-groups (reset by every command that has it)


def _use_groups(groups: str | None) -> None:
    """--as-groups: see what a caller with these groups sees (checked when the settings load)."""
    _AS_GROUPS[0] = groups


def _use_profile(profile: str | None) -> None:
    """--profile: set for this process and its children (kb serve's workers), like the SDK's variable."""
    if profile:
        import os

        os.environ["DATABRICKS_CONFIG_PROFILE"] = profile


def _settings():
    from agent.settings import load_settings  # heavy: pydantic-settings

    return load_settings(as_groups=_AS_GROUPS[0]) if _AS_GROUPS[0] is not None else load_settings()


# ---------------------------------------------------------------- ingest


@app.command()
@handle_errors
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (default: KB_KNOWLEDGE_DIR).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build a fresh index; queries use the old one until it is done.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail if any file is skipped.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    checksum: Annotated[
        bool, typer.Option("--checksum", help="Detect changes by content hash, even when size and mtime are unchanged.")
    ] = False,
    profile: ProfileOption = None,
) -> None:
    """Sync documents into the index: new and changed files are embedded, deleted ones removed.

    Reads Markdown, text, reStructuredText, HTML, PDF, Word (.docx), CSV, JSON, notebooks (.ipynb,
    Databricks source) and source code; other files are skipped and reported.
    """
    _use_profile(profile)
    from agent.cli.ingest_progress import IngestDisplay  # phases from the first second (Rich only)

    settings = _settings()
    targets = paths or [settings.knowledge_dir]
    _check_targets(targets)  # a missing path: one line, and no empty index folder left behind
    check_index_dir(settings.index_dir, create=not dry_run)  # unusable KB_INDEX_DIR: one line, before loading a model
    display = IngestDisplay(err, enabled=not as_json and not dry_run)
    with display:  # shows "starting" while the imports below load
        from agent.databricks.workspace import vector_search_config, workspace_client  # heavy: pydantic-settings
        from agent.rag.retrieval import build_embeddings  # heavy: langchain_core
        from ingest.sync.isolation import ParseLimits  # heavy: the format parsers' registry (~50 ms)
        from ingest.sync.job import ingest as run_ingest  # heavy: numpy, the Chroma adapter

        vector_search = vector_search_config(settings)  # KB_VECTOR_STORE=databricks: a missing KB_VS_* fails here
        embeddings = None if dry_run else build_embeddings(settings, command="ingest")
        if settings.embeddings == "local" and embeddings is not None:  # the model loads as a phase of its own
            display.preload = lambda: embeddings.embed_documents(["kb ingest: loading the embedding model"])
        if settings.embeddings == "databricks" and embeddings is not None:
            embeddings.batch_size = settings.embedding_batch
            embeddings.max_concurrency = settings.embedding_concurrency
        summary = run_ingest(
            targets, settings.index_dir, embeddings, dry_run=dry_run, rebuild=rebuild, progress=display.progress,
            chroma_url=settings.chroma_url, max_bytes=int(settings.max_file_mb * 1024 * 1024), checksum=checksum,
            parse_limits=ParseLimits(timeout=settings.parse_timeout, memory_mb=settings.parse_memory_mb),
            max_chunks=settings.max_chunks_per_file, access_default=settings.access_default,
            vector_search=vector_search, workspace=lambda: workspace_client(settings),
            notice=lambda line: err.print(markup(line, line=True)), phase=display.phase,
        )
    where = f"Vector Search index {vector_search.index}" if vector_search else settings.chroma_url or str(settings.index_dir)
    indexed = summary.added + summary.changed + summary.unchanged
    nothing = indexed == 0 and not summary.deleted  # no "Indexed ..." line before the error that says so
    if as_json:
        print(json.dumps(summary.to_dict() | {"index": where}, indent=2, ensure_ascii=False))
    elif nothing:
        _print_skipped(summary)
    else:
        _print_ingest_summary(summary, targets, where)
    if indexed == 0 and summary.skipped:
        raise IngestError(f"nothing could be indexed: all {len(summary.skipped)} files were skipped")
    if nothing:
        raise IngestError(f"no documents found in {', '.join(_absolute(t) for t in targets)}")
    if strict and summary.skipped:
        raise IngestError(f"{len(summary.skipped)} file(s) skipped and --strict is set")


class _progress:
    """A Rich progress bar fed by the ingest's (done, total) callback."""

    def __init__(self, enabled: bool, label: str = "embedding chunks") -> None:
        self.enabled = enabled and err.is_terminal
        self.label = label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
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


def _print_ingest_summary(summary: Any, targets: list[Path], where: str) -> None:
    verb = "Would index" if summary.dry_run else "Indexed"
    out.print(
        f"{verb} {markup(', '.join(str(t) for t in targets), line=True)}: {summary.added} added, {summary.changed} changed, "
        f"{summary.unchanged} unchanged, {summary.deleted} deleted, {len(summary.skipped)} skipped"
    )
    if summary.dry_run:
        marks = {"added": "+", "changed": "~", "deleted": "-", "relabelled": "="}
        for change in summary.files[:200]:
            detail = {"added": f"{change['chunks']} chunks", "deleted": f"{change['to_delete']} chunks to delete",
                      "changed": f"{change['to_embed']} chunks to embed, {change['to_delete']} to delete",
                      "relabelled": f"{change['chunks']} chunks re-labelled, readers: "
                                    f"{', '.join(change.get('access') or [])}"}[change["action"]]
            out.print(f"  {marks[change['action']]} {markup(change['source'], line=True)} ({detail})")
        if len(summary.files) > 200:
            out.print(f"  ... and {len(summary.files) - 200} more (--json lists them all)")
        relabel = f", documents to re-label: {summary.relabelled}" if summary.relabelled else ""
        out.print(f"chunks to embed: {summary.chunks_embedded}, chunks to delete: {summary.chunks_deleted}{relabel} "
                  "(nothing written)")
    else:
        reused = f" (+{summary.chunks_reused} reused)" if summary.chunks_reused else ""
        out.print(
            f"chunks embedded: {summary.chunks_embedded}{reused}, deleted: {summary.chunks_deleted}; "
            f"{summary.chunks_total} chunks in {markup(where, line=True)} ({summary.seconds:.1f} s)"
        )
    _print_skipped(summary)


def _absolute(path: Path | str) -> str:
    """A path as messages name it: absolute (a volume path as given)."""
    import os

    from ingest.volumes import volume_path  # heavy: ~40 ms of stdlib (email, zipfile, csv)

    return str(path) if volume_path(path) else os.path.abspath(os.path.expanduser(str(path)))


def _check_targets(targets: list[Path]) -> None:
    """A local path that does not exist: one ``UsageError`` naming it absolutely, before anything is
    created (volume paths are checked by the ingest, against the workspace)."""
    from ingest.volumes import volume_path  # heavy: ~40 ms of stdlib (email, zipfile, csv)

    for target in targets:
        if volume_path(target) is None and not Path(target).expanduser().exists():
            raise UsageError(f"no such file or folder: {_absolute(target)}")


def _print_skipped(summary: Any) -> None:
    for skipped in summary.skipped[:50]:
        err.print(f"[yellow]skipped[/] {markup(skipped.source, line=True)}: {markup(skipped.reason, line=True)}")
    if len(summary.skipped) > 50:
        err.print(f"[yellow]skipped[/] ... and {len(summary.skipped) - 50} more (--json lists them all)")
    for cut in summary.truncated[:50]:
        err.print(f"[yellow]truncated[/] {markup(cut['source'], line=True)}: {markup(cut['reason'], line=True)}")
    if len(summary.truncated) > 50:
        err.print(f"[yellow]truncated[/] ... and {len(summary.truncated) - 50} more (--json lists them all)")


# ---------------------------------------------------------------- search


@app.command()
@handle_errors
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many passages.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    mode: Annotated[str | None, typer.Option("--mode", help="dense, bm25 or hybrid (default KB_SEARCH_MODE).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show each hit's dense and BM25 ranks and scores.")] = False,
    profile: ProfileOption = None,
    as_groups: AsGroupsOption = None,
) -> None:
    """Find the passages closest to QUERY. Needs no LLM and no network."""
    _use_profile(profile)
    _use_groups(as_groups)
    from agent.rag.search import build_search, search_json  # heavy: numpy, the index (no LangChain runnables)

    from agent.observability.tracing import retriever_span

    settings = _settings()
    searcher = build_search(settings, k=k, mode=mode)
    with retriever_span(query) as record:
        documents = searcher.invoke(query)
        record(documents)
    if as_json:
        print(json.dumps(search_json(query, documents, explain=explain, mode=searcher.mode), indent=2, ensure_ascii=False))
    else:
        _print_passages(documents)
        _print_explain(documents, explain)


def _print_explain(documents: list[Any], explain: bool) -> None:
    if explain and documents:
        from agent.cli.explain import explain_table  # heavy: decimal + a Rich table (~5 ms), --explain only

        out.print(explain_table(documents))


def _print_passages(documents: list[Any]) -> None:
    from rich.panel import Panel

    if not documents:
        out.print("no passages found")
    for rank, document in enumerate(documents, 1):
        meta = document.metadata
        where = meta.get("section") or (f"page {meta['page']}" if meta.get("page") else "")
        title = f"[{rank}] {meta.get('source')} · {meta.get('title', '')}" + (f" · {where}" if where else "")
        subtitle = f"score {meta.get('score', 0):.3f}"
        # soft_wrap off here: a panel must wrap its text, not crop it, also when output is piped
        out.print(
            Panel(markup(document.page_content), title=literal(title), title_align="left", subtitle=subtitle),
            soft_wrap=False,
        )


# ---------------------------------------------------------------- ask


@app.command()
@handle_errors
def ask(
    question: Annotated[str, typer.Argument(help="Your question.")],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many passages to give the model.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of streaming.")] = False,
    mode: Annotated[str | None, typer.Option("--mode", help="dense, bm25 or hybrid (default KB_SEARCH_MODE).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show each passage's dense and BM25 ranks and scores.")] = False,
    profile: ProfileOption = None,
    as_groups: AsGroupsOption = None,
) -> None:
    """Answer QUESTION from the indexed documents with numbered citations, streamed."""
    _use_profile(profile)
    _use_groups(as_groups)
    status = adopt(err, enabled=not as_json)  # a terminal's sign of life, shown since agent.cli.main
    status.show("searching…")
    from agent.rag.search import build_search, search_json  # heavy: numpy, the index (no LangChain runnables)

    settings = _settings()
    searcher = build_search(settings, k=k, command="ask", mode=mode)
    if not settings.llm_configured:
        from agent.usage.tokens import UNKNOWN  # heavy: langchain_core

        missing = " and ".join(settings.missing_llm_settings())
        notice = f"no Databricks model configured: set {missing} to get answers; showing the retrieved passages instead"
        documents = searcher.invoke(question)
        status.stop()
        if as_json:
            data = search_json(question, documents, explain=explain)
            print(json.dumps({"question": question, "answer": None, "error": notice, "sources": [],
                              "usage": dict(UNKNOWN), "passages": data["results"]}, indent=2, ensure_ascii=False))
        else:
            err.print(f"[yellow]note:[/] {escape(notice)}")
            _print_passages(documents)
            _print_explain(documents, explain)
        return

    # The answer stack (LangChain, langchain_openai, openai: most of a fresh kb ask) is imported on a
    # thread while this one loads the encoder, embeds the question and searches (NumPy and ONNX
    # Runtime release the GIL); the answer service then retrieves again, warm (agent.cli.prefetch).
    from agent.cli.prefetch import prefetch

    loading = prefetch("agent.rag.service", "agent.databricks.llm", "agent.cli.repl")
    try:
        searcher.invoke(question)
    finally:
        loading.join()  # also before an error's exit: no thread left importing at interpreter shutdown
    from agent.rag.answer import Answer  # heavy: langchain_core (these three; imported by now)
    from agent.rag.retrieval import retriever_for
    from agent.rag.service import AnswerService

    service = AnswerService.from_settings(settings, command="ask", retriever=retriever_for(searcher))
    result: Any = None
    try:
        for kind, value in service.stream(question):
            if as_json:
                result = value if kind == "done" else result
            elif kind == "passages":
                if explain:
                    status.stop()
                    _print_explain(value, explain)
                status.show("writing…")
            elif kind == "token":
                status.stop()
                _write(value)
            elif kind == "done":
                result = value
    except StreamInterruptedError as exc:
        status.stop()
        if not as_json:
            _write("\n")
        else:
            print(json.dumps(Answer.interrupted(question, exc).to_json(), indent=2, ensure_ascii=False))
        err.print(f"[bold red]error:[/] {markup(public_message(exc), line=True)} (the answer above is incomplete)")
        raise typer.Exit(exc.exit_code) from None
    status.stop()
    if as_json:
        print(json.dumps(result.to_json(explain=explain), indent=2, ensure_ascii=False))
        return
    _write("\n")
    if result.refused:  # nothing relevant enough: it said so instead of letting the model guess
        closest = ", ".join(f"{d.metadata.get('source')} ({d.metadata.get('dense_score') or 0:.2f})"
                            for d in result.passages[:3])
        if closest:
            out.print(f"[dim]closest passages: {markup(closest, line=True)}[/]")
        return
    from agent.cli.repl import sources_lines  # heavy: langchain_core, langchain_openai

    for line in sources_lines(result.sources, result.text):  # "Sources", or what the citations lack
        out.print(line)


def _write(text: str) -> None:
    sys.stdout.write(clean(text))  # a streamed model answer: no escape sequence reaches the terminal
    sys.stdout.flush()


# ---------------------------------------------------------------- chat, agent


@app.command()
@handle_errors
def chat(
    session: Annotated[
        str | None, typer.Option("--session", help="Keep the conversation under this name across runs (in KB_INDEX_DIR).")
    ] = None,
    use_agent: Annotated[bool, typer.Option("--agent", help="Use the tool-using assistant instead of one search per question.")] = False,
    k: Annotated[int | None, typer.Option("-k", min=1, max=50, help="Passages per question (default KB_TOP_K; without --agent).")] = None,
    profile: ProfileOption = None,
    as_groups: AsGroupsOption = None,
) -> None:
    """Chat with the documents: follow-up questions, streamed cited answers; /sources /reset /exit."""
    _use_profile(profile)
    _use_groups(as_groups)
    status = adopt(err)  # "loading…" until the prompt (stderr terminals only; shown since agent.cli.main)
    status.show("loading…")
    from agent.cli.repl import Terminal, chat_repl  # heavy: langchain_core, langchain_openai
    from agent.rag.history import check_session_name  # heavy: langchain_core

    settings = _settings()
    if session is not None:
        check_session_name(session)
    code = chat_repl(settings, session=session, agent=use_agent, k=k, term=Terminal(out, err, status=status))
    if code:
        raise typer.Exit(code)


@app.command()
@handle_errors
def agent(
    task: Annotated[str, typer.Argument(help="What to find out or do with the documents.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, sources and steps as JSON.")] = False,
    profile: ProfileOption = None,
    as_groups: AsGroupsOption = None,
) -> None:
    """Let the assistant search, read and calculate over the documents; shows each tool call, then the cited answer."""
    _use_profile(profile)
    _use_groups(as_groups)
    status = adopt(err, enabled=not as_json)  # a terminal's sign of life, shown since agent.cli.main
    status.show("thinking…")
    from agent.cli.repl import Terminal, run_agent_task  # heavy: langchain_core, langchain_openai

    code = run_agent_task(_settings(), task, as_json=as_json, term=Terminal(out, err, interactive=False, status=status))
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------- serve


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, envvar="DATABRICKS_APP_PORT",
                                      help="Port to listen on (in a Databricks App: the one it gives).")] = 8000,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback address without KB_API_KEYS (open to anyone).")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes (use the CPU count).")] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level (access log at info).")] = "info",
    profile: ProfileOption = None,
) -> None:
    """Serve the HTTP API (OpenAI-compatible /v1/chat/completions, /api/search, /api/ask) and the chat page at /."""
    _use_profile(profile)
    from agent.api.server import check_bind, serve as run_server  # heavy: fastapi, uvicorn

    settings = _settings()
    check_bind(settings, host, insecure)
    run_server(settings, host=host, port=port, insecure=insecure, workers=workers, log_level=log_level)


# ---------------------------------------------------------------- eval


@app.command(name="eval")
@handle_errors
def eval_(
    gold: Annotated[Path, typer.Argument(help="Gold set: JSON Lines of {id, question, sources, answer}.")],
    modes: Annotated[
        list[str] | None, typer.Option("--mode", help="dense, bm25 or hybrid; repeatable (default: all three).")
    ] = None,
    answers: Annotated[bool, typer.Option("--answers", help="Also answer each question and have the model judge it.")] = False,
    fail_under: Annotated[
        list[str] | None,
        typer.Option("--fail-under", help="METRIC=VALUE (e.g. nDCG@10=0.8, hybrid:hit@5=0.9); exit 1 if missed. Repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option("--compare", help="KEY=VALUE: compare the current settings with these changed (e.g. KB_SEARCH_MODE=bm25). Repeatable.",
                     metavar="KEY=VALUE"),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option("--baseline", help="KEY=VALUE: change the baseline side of --compare too (e.g. KB_INDEX_DIR=.kb-old). Repeatable.",
                     metavar="KEY=VALUE"),
    ] = None,
    profile: ProfileOption = None,
    as_groups: AsGroupsOption = None,
) -> None:
    """Measure retrieval (hit@k, recall@10, MRR, nDCG@10 per mode and per question kind) and optionally answers on a gold set."""
    _use_profile(profile)
    _use_groups(as_groups)
    from agent.evaluation.evaluate import EvalThresholdError, failed_checks_message, run_eval  # heavy: langchain_core
    from agent.evaluation.report import print_report  # heavy: decimal + Rich tables (~9 ms)

    settings = _settings()
    if compare or baseline:
        _compare(settings, gold, compare or [], baseline or [], as_json=as_json,
                 others=bool(modes or answers or fail_under))
        return
    with _progress(enabled=not as_json, label="evaluating questions") as progress:
        report = run_eval(
            settings, gold, modes=modes or ("dense", "bm25", "hybrid"), answers=answers,
            fail_under=fail_under or (), on_question=progress,
        )
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report, out)
    if not report["ok"]:
        raise EvalThresholdError(failed_checks_message(report))


def _compare(settings: Any, gold: Path, compare: list[str], baseline: list[str], *, as_json: bool, others: bool) -> None:
    """kb eval --compare: the baseline and the variant settings, validated, then both runs and the diff."""
    from agent.evaluation.compare import run_compare
    from agent.evaluation.report import print_compare
    from agent.settings import parse_overrides, settings_with

    if others:
        raise UsageError("--compare runs each side in its own KB_SEARCH_MODE: drop --mode, --answers and --fail-under")
    if not compare:
        raise UsageError("--baseline needs --compare KEY=VALUE (the variant)")
    base_overrides = parse_overrides(baseline, option="--baseline")
    variant_overrides = parse_overrides(compare, option="--compare")
    base = settings_with(settings, base_overrides)
    variant = settings_with(settings, {**base_overrides, **variant_overrides})
    labels = ("current settings" + "".join(f" + {spec}" for spec in baseline),
              "current settings" + "".join(f" + {spec}" for spec in [*baseline, *compare]))
    with _progress(enabled=not as_json, label="evaluating both configurations") as progress:
        report = run_compare(base, variant, gold, labels=labels, on_question=progress)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_compare(report, out)


# ---------------------------------------------------------------- usage


@app.command()
@handle_errors
def usage(
    since: Annotated[str, typer.Option("--since", help="How far back: 7d, 24h, 30m, 2w, a date (2025-01-31), or 'all'.")] = "7d",
    by: Annotated[str, typer.Option("--by", help="Group by command, endpoint, caller or day.")] = "command",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model calls recorded in the local usage ledger: requests, tokens, latency p50/p95."""
    from agent.usage.ledger import ledger_path, open_ledger  # heavy: langchain_core
    from agent.usage.report import GROUPINGS, parse_since, report_json, usage_table  # heavy: ~4 ms of kb --help for one command

    settings = _settings()
    if by not in GROUPINGS:
        raise UsageError(f"invalid --by '{by}': use one of {', '.join(GROUPINGS)}")
    start = parse_since(since)
    ledger = open_ledger(settings)
    rows = ledger.rows(start) if ledger is not None else []
    path = ledger_path(settings)
    report = report_json(rows, by=by, since=start, ledger=str(path) if path else None)
    if as_json:
        print(json.dumps(report, indent=2))
    elif ledger is None:
        err.print("[yellow]note:[/] the usage ledger is off (KB_USAGE_LEDGER=off)")
    elif not rows:
        out.print(f"no model calls recorded {'since ' + markup(since, line=True) + ' ' if start else ''}"
                  f"in {markup(path, line=True)}")
    else:
        out.print(usage_table(report))


# ---------------------------------------------------------------- doctor


@app.command()
@handle_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    profile: ProfileOption = None,
) -> None:
    """Check settings, authentication, the workspace, the endpoints, a chat call, the index, the ledger
    and tracing, in that order; print a fix for each failure. Exit 0 when all pass, 1 otherwise."""
    _use_profile(profile)
    from agent.databricks.doctor import run_doctor  # heavy: langchain_openai, databricks-sdk

    ok, checks = run_doctor()
    if as_json:
        print(json.dumps({"ok": ok, "checks": [check.to_json() for check in checks]}, indent=2, ensure_ascii=False))
    else:
        marks = {"ok": "[green]ok  [/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}
        for check in checks:  # details may quote upstream messages: shown literally, secrets masked
            out.print(f"{marks[check.status]} {markup(check.name):<20} {markup(public_message(check.detail))}")
            if check.status == "fail" and check.fix:
                out.print(f"     [yellow]fix:[/] {markup(public_message(check.fix))}")
    if not ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------- deploy


deploy = typer.Typer(help="Deploy kb on Databricks (an App running kb serve).", no_args_is_help=True)
app.add_typer(deploy, name="deploy")


@deploy.command(name="app")
@handle_errors
def deploy_app(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the App's folder (app.yaml, resources, source) only.")] = False,
    folder: Annotated[Path, typer.Option("--out", help="Folder to write.")] = Path("databricks-app"),
    name: Annotated[str, typer.Option("--name", help="The App's name.")] = "kb",
    api_keys_secret: Annotated[
        str | None, typer.Option("--api-keys-secret", help="SCOPE/KEY of a Databricks secret holding KB_API_KEYS.")
    ] = None,
) -> None:
    """Write what a Databricks App running kb serve needs; deploy it with the databricks CLI (README)."""
    from agent.deploy.app import write_app  # heavy: pydantic-settings

    if not dry_run:
        raise UsageError("only --dry-run is supported: it writes the App's folder; deploy it with "
                         "'databricks apps deploy' (its DEPLOY.md and the README say how)")
    for path in write_app(_settings(), folder, name=name, keys_secret=api_keys_secret):
        out.print(f"wrote {markup(str(path), line=True)}")
    err.print(f"next: {markup(str(folder / 'DEPLOY.md'), line=True)} has the commands to deploy it")


from agent.cli.helpfmt import readable_help  # noqa: E402  (after every command is registered)

readable_help(app)  # plain help in 80 columns: value names (PATH..., N, QUERY) and an example per command


def main() -> None:
    app()


if __name__ == "__main__":
    main()
