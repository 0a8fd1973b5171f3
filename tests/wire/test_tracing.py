"""MLflow tracing against a local file-store tracking URI: one trace per command, with retriever
and chat model spans, and no token in what is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply

runner = CliRunner()


def test_tracing_off_without_uri_and_clear_error_without_mlflow(env: Path, monkeypatch) -> None:
    import builtins

    from agent.observability import tracing
    from agent.errors import ConfigError
    from agent.settings import load_settings

    assert tracing.configure_tracing(load_settings()) is False and not tracing.tracing_enabled()
    monkeypatch.setenv("KB_MLFLOW_TRACKING_URI", "databricks")
    with pytest.raises(ConfigError, match="needs KB_MLFLOW_EXPERIMENT"):
        tracing.configure_tracing(load_settings())
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("KB_MLFLOW_TRACKING_URI", "file:///tmp/nowhere")
    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    result = runner.invoke(app, ["search", "anything"])
    assert result.exit_code == 2
    assert "error: KB_MLFLOW_TRACKING_URI is set but MLflow is not installed: pip install 'kb[mlflow]'" in result.stderr


@pytest.fixture
def mlflow_store(indexed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mlflow = pytest.importorskip("mlflow", reason="the 'mlflow' extra is not installed (pip install -e '.[mlflow]')")
    from agent.observability import tracing

    store = tmp_path / "mlruns"
    monkeypatch.setenv("KB_MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("KB_MLFLOW_EXPERIMENT", "kb-tests")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield store
    tracing.disable_tracing()
    mlflow.set_tracking_uri(None)


def _traces(store: Path) -> list:
    import mlflow

    from agent.observability import tracing

    tracing.flush()
    return mlflow.search_traces(return_type="list")  # in the active experiment, KB_MLFLOW_EXPERIMENT


def test_ask_is_one_trace_with_retriever_and_llm_spans(mlflow_store: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 99, "completion_tokens": 8}))
    result = runner.invoke(app, ["ask", "How many vacation days do I get?", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["answer"] == "You get 23 vacation days [1]."

    [trace] = _traces(mlflow_store)
    spans = trace.data.spans
    types = {span.span_type for span in spans}
    assert {"RETRIEVER", "CHAT_MODEL"} <= types, types
    root = [span for span in spans if span.parent_id is None]
    assert [span.name for span in root] == ["kb ask"]
    assert trace.info.tags.get("kb.command") == "ask"
    retriever = next(span for span in spans if span.span_type == "RETRIEVER")
    assert "hr/pto.md" in json.dumps(retriever.outputs, default=str)
    llm = next(span for span in spans if span.span_type == "CHAT_MODEL")
    assert "23 vacation days" in json.dumps(llm.outputs, default=str)

    written = b"".join(p.read_bytes() for p in mlflow_store.rglob("*") if p.is_file())
    assert written and CANARY.encode() not in written


def test_search_is_traced_too(mlflow_store: Path) -> None:
    result = runner.invoke(app, ["search", "vpn setup", "--json"])
    assert result.exit_code == 0, result.stderr
    [trace] = _traces(mlflow_store)
    assert any(span.span_type == "RETRIEVER" for span in trace.data.spans)
    assert trace.info.tags.get("kb.command") == "search"


def test_serve_worker_processes_turn_tracing_on(mlflow_store: Path) -> None:
    from agent.observability import tracing
    from agent.api.server import app_from_env

    assert not tracing.tracing_enabled()
    app_from_env()  # what each `kb serve --workers N` process runs
    assert tracing.tracing_enabled()
