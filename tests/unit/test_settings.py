from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.settings import load_settings
from tests.conftest import CANARY


def test_defaults(env: Path) -> None:
    s = load_settings()
    assert s.chat_endpoint == "databricks-meta-llama-3-3-70b-instruct"
    assert s.usage_context == {"project": "kb"}
    assert s.embeddings == "local"
    assert s.embedding_endpoint == "databricks-gte-large-en"
    assert s.knowledge_dir == Path("knowledge")
    assert s.serving_base_url is None and not s.llm_configured
    assert s.missing_llm_settings() == ["DATABRICKS_TOKEN", "DATABRICKS_HOST (or base_url)"]


@pytest.mark.parametrize("name", ["base_url", "BASE_URL"])
def test_base_url_either_case(env: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "https://adb-1.azuredatabricks.net/serving-endpoints/")
    assert load_settings().serving_base_url == "https://adb-1.azuredatabricks.net/serving-endpoints"


@pytest.mark.parametrize("host", ["adb-2.azuredatabricks.net", "https://adb-2.azuredatabricks.net/"])
def test_base_url_derived_from_host(env: Path, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", host)
    assert load_settings().serving_base_url == "https://adb-2.azuredatabricks.net/serving-endpoints"


def test_dotenv_in_working_directory(env: Path) -> None:
    (env / ".env").write_text(
        f"DATABRICKS_TOKEN={CANARY}\nbase_url=https://x.cloud.databricks.com/serving-endpoints\n"
        'KB_USAGE_CONTEXT={"team": "data", "project": "kb"}\nKB_CHAT_ENDPOINT=my-llm\n'
    )
    s = load_settings()
    assert s.llm_configured and s.chat_endpoint == "my-llm"
    assert s.usage_context == {"team": "data", "project": "kb"}
    assert s.databricks_token.get_secret_value() == CANARY
    assert CANARY not in repr(s) and CANARY not in str(s.model_dump())


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("KB_USAGE_CONTEXT", "{not json", "KB_USAGE_CONTEXT"),
        ("KB_USAGE_CONTEXT", '{"n": 1}', "value of 'n' must be a string"),
        ("KB_USAGE_CONTEXT", '["a"]', "JSON object"),
        ("base_url", "ftp://host/serving-endpoints", "base_url"),
        ("KB_EMBEDDINGS", "openai", "KB_EMBEDDINGS"),
        ("KB_TOP_K", "0", "KB_TOP_K"),
    ],
)
def test_invalid_values_name_the_variable(env: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("host", ["http://[::1", "https://adb-1.net:99999", "ftp://adb-1.net"])
def test_a_malformed_databricks_host_is_one_line(env, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", host)
    with pytest.raises(ConfigError, match=r"^invalid DATABRICKS_HOST: "):
        load_settings()


def test_env_names_are_derived_from_the_fields() -> None:
    from agent.settings import ENV_NAMES, Settings

    assert set(ENV_NAMES) == set(Settings.model_fields)
    assert ENV_NAMES["databricks_client_secret"] == "DATABRICKS_CLIENT_SECRET" and ENV_NAMES["base_url"] == "base_url"
