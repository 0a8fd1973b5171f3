"""``kb deploy app --dry-run``: the Databricks App folder (app.yaml running kb serve on the App's port,
resources by reference, never a secret), and ``kb serve`` taking the App's port and forwarded user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import CANARY, KbRunner

API_KEY = "app-key-SECRET-0123456789abcdef"


@pytest.fixture
def app_env(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Configured as a developer would be before deploying: a token, keys, an index with a ledger."""
    index = tmp_path / "index"
    (index / "snapshot").mkdir(parents=True)
    (index / "snapshot" / "current.json").write_text("{}", encoding="utf-8")
    (index / "usage.sqlite").write_bytes(b"ledger rows")
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY)
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-123.azuredatabricks.net")
    monkeypatch.setenv("KB_API_KEYS", f"notebooks:{API_KEY}")
    monkeypatch.setenv("KB_CHAT_ENDPOINT", "databricks-claude-sonnet-4-5")
    return tmp_path / "out"


def _texts(folder: Path) -> str:
    return "\n".join(p.read_text("utf-8", "replace") for p in folder.rglob("*")
                     if p.is_file() and p.suffix in (".yaml", ".json", ".md", ".txt"))


def test_dry_run_writes_an_app_yaml_running_kb_serve_without_secrets(app_env: Path, kb: KbRunner) -> None:
    kb.forbid(API_KEY)
    result = kb("deploy", "app", "--dry-run", "--out", str(app_env), "--name", "kb-docs")
    assert result.exit_code == 0, result.stderr
    assert "DEPLOY.md" in result.stderr

    spec = yaml.safe_load((app_env / "app.yaml").read_text())
    assert spec["command"] == ["python", "-m", "agent.cli", "serve", "--host", "0.0.0.0"]  # port: DATABRICKS_APP_PORT
    env = {item["name"]: item for item in spec["env"]}
    assert env["KB_CHAT_ENDPOINT"] == {"name": "KB_CHAT_ENDPOINT", "valueFrom": "serving-endpoint"}
    assert env["KB_TRUST_FORWARDED_USER"]["value"] == "true" and env["KB_INDEX_DIR"]["value"] == "index"
    assert "KB_API_KEYS" not in env and "DATABRICKS_TOKEN" not in env  # no secret without a secret resource

    resources = json.loads((app_env / "app-resources.json").read_text())
    assert resources["name"] == "kb-docs"
    assert resources["resources"] == [{"name": "serving-endpoint", "serving_endpoint": {
        "name": "databricks-claude-sonnet-4-5", "permission": "CAN_QUERY"}}]
    assert "databricks apps deploy kb-docs" in (app_env / "DEPLOY.md").read_text()
    assert "langchain" in (app_env / "requirements.txt").read_text()
    assert (app_env / "agent" / "cli" / "__main__.py").is_file() and (app_env / "ingest").is_dir()
    assert (app_env / "index" / "snapshot" / "current.json").is_file()
    assert not (app_env / "index" / "usage.sqlite").exists() and not list(app_env.rglob("__pycache__"))
    everything = _texts(app_env)
    assert CANARY not in everything and API_KEY not in everything


def test_keys_come_from_a_secret_resource_and_vector_search_needs_no_index_copy(
    app_env: Path, kb: KbRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_VECTOR_STORE", "databricks")
    monkeypatch.setenv("KB_VS_INDEX", "main.kb.chunks")
    monkeypatch.setenv("KB_VS_ENDPOINT", "kb-vs")
    monkeypatch.setenv("KB_EMBEDDINGS", "databricks")
    result = kb.forbid(API_KEY)("deploy", "app", "--dry-run", "--out", str(app_env), "--api-keys-secret", "kb/api-keys")
    assert result.exit_code == 0, result.stderr
    env = {item["name"]: item for item in yaml.safe_load((app_env / "app.yaml").read_text())["env"]}
    assert env["KB_API_KEYS"] == {"name": "KB_API_KEYS", "valueFrom": "api-keys"}
    assert env["KB_EMBEDDING_ENDPOINT"]["valueFrom"] == "embedding-endpoint"
    assert env["KB_VS_INDEX"]["value"] == "main.kb.chunks" and env["KB_VECTOR_STORE"]["value"] == "databricks"
    assert "KB_INDEX_DIR" not in env and not (app_env / "index").exists()
    by_name = {r["name"]: r for r in json.loads((app_env / "app-resources.json").read_text())["resources"]}
    assert by_name["api-keys"]["secret"] == {"scope": "kb", "key": "api-keys", "permission": "READ"}
    assert by_name["embedding-endpoint"]["serving_endpoint"]["permission"] == "CAN_QUERY"
    assert "SELECT` on the index `main.kb.chunks`" in (app_env / "DEPLOY.md").read_text()
    assert API_KEY not in _texts(app_env) and CANARY not in _texts(app_env)


@pytest.mark.parametrize("args,message", [
    ([], "only --dry-run is supported"),
    (["--dry-run", "--api-keys-secret", "no-slash"], "use SCOPE/KEY"),
])
def test_bad_invocations_are_one_error_line(app_env: Path, kb: KbRunner, args: list[str], message: str) -> None:
    result = kb("deploy", "app", "--out", str(app_env), *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert not app_env.exists()


def test_out_may_not_overwrite_kbs_own_source(app_env: Path, kb: KbRunner) -> None:
    root = Path(__file__).resolve().parents[2]
    result = kb("deploy", "app", "--dry-run", "--out", str(root))
    assert result.exit_code == 2 and "would overwrite kb's own source" in result.stderr


def test_kb_serve_takes_the_apps_port_and_trusts_its_proxy(app_env: Path, kb: KbRunner,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.api.server as server

    started: dict = {}
    monkeypatch.setattr(server, "serve", lambda settings, **kwargs: started.update(kwargs))
    monkeypatch.delenv("KB_API_KEYS")
    monkeypatch.setenv("DATABRICKS_APP_PORT", "8123")
    refused = kb("serve", "--host", "0.0.0.0")  # open on the network: refused ...
    assert refused.exit_code != 0 and "refusing to listen on 0.0.0.0" in refused.stderr
    monkeypatch.setenv("KB_TRUST_FORWARDED_USER", "true")  # ... unless an App's proxy authenticates
    result = kb("serve", "--host", "0.0.0.0")
    assert result.exit_code == 0, result.stderr
    assert started["port"] == 8123 and started["host"] == "0.0.0.0"
