"""MLflow tracing to Databricks authenticates like kb: the credentials kb read (also from .env) reach
the environment the Databricks SDK inside MLflow reads, without overriding what the user set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.observability.tracing import _databricks_credentials
from agent.settings import load_settings


def test_oauth_client_from_dotenv_reaches_mlflow(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (env / ".env").write_text("DATABRICKS_HOST=https://adb-1.2.azuredatabricks.net\n"
                              "DATABRICKS_CLIENT_ID=sp-id\nDATABRICKS_CLIENT_SECRET=sp-secret\n")
    for name in ("DATABRICKS_HOST", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "mine")  # set by the user: kept
    settings = load_settings()
    _databricks_credentials(settings)
    try:
        assert os.environ["DATABRICKS_HOST"] == "https://adb-1.2.azuredatabricks.net"
        assert os.environ["DATABRICKS_CLIENT_ID"] == "sp-id" and os.environ["DATABRICKS_CLIENT_SECRET"] == "sp-secret"
        assert os.environ["DATABRICKS_CONFIG_PROFILE"] == "mine"
        assert "DATABRICKS_TOKEN" not in os.environ
    finally:
        for name in ("DATABRICKS_HOST", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
            os.environ.pop(name, None)
