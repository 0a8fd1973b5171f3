"""One typed settings object, read at the edge from the environment and a ``.env`` file.

``load_settings()`` is the only place the environment is read; everything else receives a
``Settings``. Invalid values fail with a ``ConfigError`` naming the variable. The token is a
``SecretStr``: it never shows in reprs, logs or errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import ConfigError

DEFAULT_CHAT_ENDPOINT = "databricks-meta-llama-3-1-405b-instruct"
DEFAULT_EMBEDDING_ENDPOINT = "databricks-gte-large-en"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    databricks_token: SecretStr | None = Field(None, validation_alias=_env("DATABRICKS_TOKEN"))
    base_url: str | None = Field(None, validation_alias=_env("base_url", "BASE_URL"))
    databricks_host: str | None = Field(None, validation_alias=_env("DATABRICKS_HOST"))
    chat_endpoint: str = Field(DEFAULT_CHAT_ENDPOINT, validation_alias=_env("KB_CHAT_ENDPOINT"))
    usage_context: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"project": "kb"}, validation_alias=_env("KB_USAGE_CONTEXT")
    )
    embeddings: Literal["local", "databricks"] = Field("local", validation_alias=_env("KB_EMBEDDINGS"))
    embedding_endpoint: str = Field(DEFAULT_EMBEDDING_ENDPOINT, validation_alias=_env("KB_EMBEDDING_ENDPOINT"))
    index_dir: Path = Field(Path(".kb"), validation_alias=_env("KB_INDEX_DIR"))
    knowledge_dir: Path = Field(Path("knowledge"), validation_alias=_env("KB_KNOWLEDGE_DIR"))
    timeout: float = Field(60.0, gt=0, le=3600, validation_alias=_env("KB_TIMEOUT"))
    max_retries: int = Field(3, ge=0, le=10, validation_alias=_env("KB_MAX_RETRIES"))
    max_tokens: int = Field(1024, ge=1, le=32768, validation_alias=_env("KB_MAX_TOKENS"))
    top_k: int = Field(5, ge=1, le=50, validation_alias=_env("KB_TOP_K"))

    @field_validator("usage_context", mode="before")
    @classmethod
    def _parse_usage_context(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object of string to string ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of string to string")
        for key, item in value.items():
            if not isinstance(item, str):
                raise ValueError(f"value of '{key}' must be a string, got {type(item).__name__}")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL such as https://adb-123.azuredatabricks.net/serving-endpoints")
        return value

    @field_validator("databricks_token")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @property
    def serving_base_url(self) -> str | None:
        """``base_url`` if set, else ``https://<DATABRICKS_HOST>/serving-endpoints``."""
        if self.base_url:
            return self.base_url
        if self.databricks_host and self.databricks_host.strip():
            host = self.databricks_host.strip().rstrip("/")
            if "://" not in host:
                host = f"https://{host}"
            return f"{host}/serving-endpoints"
        return None

    @property
    def llm_configured(self) -> bool:
        return self.databricks_token is not None and self.serving_base_url is not None

    def missing_llm_settings(self) -> list[str]:
        missing = []
        if self.databricks_token is None:
            missing.append("DATABRICKS_TOKEN")
        if self.serving_base_url is None:
            missing.append("DATABRICKS_HOST (or base_url)")
        return missing


# Field name -> the variable a user sets, for error messages.
ENV_NAMES = {
    "databricks_token": "DATABRICKS_TOKEN",
    "base_url": "base_url",
    "databricks_host": "DATABRICKS_HOST",
    "chat_endpoint": "KB_CHAT_ENDPOINT",
    "usage_context": "KB_USAGE_CONTEXT",
    "embeddings": "KB_EMBEDDINGS",
    "embedding_endpoint": "KB_EMBEDDING_ENDPOINT",
    "index_dir": "KB_INDEX_DIR",
    "knowledge_dir": "KB_KNOWLEDGE_DIR",
    "timeout": "KB_TIMEOUT",
    "max_retries": "KB_MAX_RETRIES",
    "max_tokens": "KB_MAX_TOKENS",
    "top_k": "KB_TOP_K",
}
_ALIAS_TO_ENV = {alias.lower(): env for env in ENV_NAMES.values() for alias in (env,)}
_ALIAS_TO_ENV["base_url"] = "base_url"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and ``.env``; raise ``ConfigError`` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = str(error["loc"][0]) if error.get("loc") else "?"
        name = ENV_NAMES.get(loc) or _ALIAS_TO_ENV.get(loc.lower(), loc)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {message}") from None
    except Exception as exc:  # pydantic-settings raises SettingsError for undecodable sources
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())[:200]}") from None
