"""Tracing: MLflow when ``KB_MLFLOW_TRACKING_URI`` is set; LangSmith through LangChain's own variables.

MLflow (optional extra ``kb[mlflow]``, the lean ``mlflow-tracing`` SDK, or a full ``mlflow``):
``configure_tracing(settings)`` points MLflow at the tracking URI (``databricks``, an
``http(s)://`` tracking server, or a local ``file:`` store) and the experiment
(``KB_MLFLOW_EXPERIMENT``), then turns on ``mlflow.langchain.autolog()``: every LangChain run
(retriever, prompt, chat model, agent steps) becomes a span. ``command_span("ask")`` groups one
``kb`` command into one trace tagged ``kb.command``. Nothing is imported from MLflow unless a
tracking URI is configured, so ``kb`` stays fast without it.

LangSmith needs no code here: set ``LANGSMITH_TRACING=true`` and ``LANGSMITH_API_KEY`` (and
optionally ``LANGSMITH_PROJECT``) and LangChain sends the same runs to LangSmith.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from agent.errors import ConfigError

log = logging.getLogger("kb.tracing")

# Commands whose whole run is one trace. Long-running ones (chat, serve, eval) get one trace per
# LangChain run instead (a question, an HTTP request, an eval item).
ONE_TRACE_COMMANDS = frozenset({"ask", "search", "agent", "ingest"})
UNTRACED_COMMANDS = frozenset({"usage"})  # make no model calls: do not even import MLflow

_configured: tuple[str, str | None] | None = None


def _is_file_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] == ":\\")  # plain path (or C:\...)


def _experiment(settings) -> str | None:
    if settings.mlflow_experiment:
        return settings.mlflow_experiment
    if settings.mlflow_tracking_uri.strip().startswith("databricks"):
        raise ConfigError(
            "KB_MLFLOW_TRACKING_URI=databricks needs KB_MLFLOW_EXPERIMENT, a workspace path such as /Users/you@example.com/kb"
        )
    return "kb"


def tracing_enabled() -> bool:
    return _configured is not None


def configure_tracing(settings) -> bool:
    """Turn MLflow tracing on if ``KB_MLFLOW_TRACKING_URI`` is set; ``False`` when it is not.

    Raises ``ConfigError`` when MLflow is not installed or the tracking URI / experiment is unusable.
    """
    global _configured
    uri = (settings.mlflow_tracking_uri or "").strip()
    if not uri:
        return False
    experiment = _experiment(settings)
    if _configured == (uri, experiment):
        return True
    try:
        import mlflow
        import mlflow.langchain
    except ImportError:
        raise ConfigError(
            "KB_MLFLOW_TRACKING_URI is set but MLflow is not installed: pip install 'kb[mlflow]'"
        ) from None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine unasked
    if _is_file_store(uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the user chose a local file store
    if uri.startswith("databricks"):
        _databricks_credentials(settings)
    try:
        mlflow.set_tracking_uri(uri)
        if experiment:
            mlflow.set_experiment(experiment)
        try:  # inline: spans of async runs (kb serve) nest under their parents
            mlflow.langchain.autolog(log_traces=True, silent=True, run_tracer_inline=True)
        except TypeError:  # an MLflow older than run_tracer_inline
            mlflow.langchain.autolog(log_traces=True, silent=True)
    except Exception as exc:  # MlflowException, connection errors: one clear line
        message = " ".join(str(exc).split())[:300]
        raise ConfigError(f"cannot set up MLflow tracing at KB_MLFLOW_TRACKING_URI={uri}: {message}") from None
    _configured = (uri, experiment)
    log.info("MLflow tracing on: %s, experiment %s", uri, experiment)
    return True


def _databricks_credentials(settings) -> None:
    """MLflow's Databricks client authenticates with the Databricks SDK's unified auth, which reads
    the environment; fill it from kb's settings (which may come from .env or base_url) where unset:
    the host, and whichever credentials kb was given (token, profile, OAuth client, Azure)."""
    if not os.environ.get("DATABRICKS_HOST") and settings.serving_base_url:
        parsed = urlparse(settings.serving_base_url)
        os.environ["DATABRICKS_HOST"] = f"{parsed.scheme}://{parsed.netloc}"
    values = {
        "DATABRICKS_TOKEN": settings.databricks_token,
        "DATABRICKS_CONFIG_PROFILE": settings.databricks_config_profile,
        "DATABRICKS_CONFIG_FILE": settings.databricks_config_file,
        "DATABRICKS_AUTH_TYPE": settings.databricks_auth_type,
        "DATABRICKS_CLIENT_ID": settings.databricks_client_id,
        "DATABRICKS_CLIENT_SECRET": settings.databricks_client_secret,
        "ARM_CLIENT_ID": settings.azure_client_id,
        "ARM_CLIENT_SECRET": settings.azure_client_secret,
        "ARM_TENANT_ID": settings.azure_tenant_id,
    }
    for name, value in values.items():
        if value is not None and not os.environ.get(name):
            os.environ[name] = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def disable_tracing() -> None:
    """Turn MLflow autologging off again (tests, notebooks), flushing pending traces."""
    global _configured
    if _configured is None:
        return
    import mlflow
    import mlflow.langchain

    flush()
    mlflow.langchain.autolog(disable=True)
    _configured = None


def flush() -> None:
    """Write out traces still queued for asynchronous export."""
    if _configured is None:
        return
    import mlflow

    with contextlib.suppress(Exception):
        mlflow.flush_trace_async_logging(terminate=False)


@contextlib.contextmanager
def command_span(command: str) -> Iterator[None]:
    """One trace per one-shot ``kb`` command (root span ``kb <command>``) when tracing is on."""
    if _configured is None or command not in ONE_TRACE_COMMANDS:
        yield
        return
    import mlflow

    with mlflow.start_span(name=f"kb {command}", span_type="CHAIN") as span:
        span.set_attribute("kb.command", command)
        with contextlib.suppress(Exception):
            mlflow.update_current_trace(tags={"kb.command": command})
        yield


@contextlib.contextmanager
def retriever_span(query: str) -> Iterator[Callable[[list[Any]], None]]:
    """A RETRIEVER span around a search that does not run through LangChain (``kb search`` ranks with
    ``KnowledgeSearch``, so MLflow's LangChain tracing sees nothing): yields ``record(documents)``.
    The span's outputs use MLflow's retriever document shape (page_content, metadata)."""
    if _configured is None:
        yield lambda documents: None
        return
    import mlflow

    with mlflow.start_span(name="KnowledgeSearch", span_type="RETRIEVER") as span:
        span.set_inputs({"query": query})
        yield lambda documents: span.set_outputs(
            [{"page_content": d.page_content, "metadata": dict(d.metadata)} for d in documents]
        )


@contextlib.contextmanager
def traced_command(command: str) -> Iterator[None]:
    """What the CLI wraps each command in: load settings, turn tracing on if configured, and
    give one-shot commands their own trace. Invalid settings are left for the command to report."""
    from agent.settings import load_settings  # heavy: pydantic-settings; kb --help imports this module

    if command in UNTRACED_COMMANDS:
        yield
        return
    try:
        settings = load_settings()
    except ConfigError:
        settings = None
    if settings is None or not configure_tracing(settings):
        yield
        return
    try:
        with command_span(command):
            yield
    finally:
        flush()
