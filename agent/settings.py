"""One typed settings object, read at the edge from the environment and a ``.env`` file.

``load_settings()`` is the only place the environment is read; everything else receives a
``Settings``. Invalid values fail with a ``ConfigError`` naming the variable. The token is a
``SecretStr``: it never shows in reprs, logs or errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent.errors import ConfigError
from agent.observability.logs import register_secret
from agent.usage.context import validate_configured
from ingest.access import AccessRulesError, parse_groups

DEFAULT_CHAT_ENDPOINT = "databricks-meta-llama-3-3-70b-instruct"
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
    # Databricks unified authentication (agent/databricks/auth.py): what the SDK's Config reads,
    # passed to it explicitly so a .env file works like the environment.
    databricks_config_profile: str | None = Field(None, validation_alias=_env("DATABRICKS_CONFIG_PROFILE"))
    databricks_config_file: str | None = Field(None, validation_alias=_env("DATABRICKS_CONFIG_FILE"))
    databricks_auth_type: str | None = Field(None, validation_alias=_env("DATABRICKS_AUTH_TYPE"))
    databricks_client_id: str | None = Field(None, validation_alias=_env("DATABRICKS_CLIENT_ID"))
    databricks_client_secret: SecretStr | None = Field(None, validation_alias=_env("DATABRICKS_CLIENT_SECRET"))
    azure_client_id: str | None = Field(None, validation_alias=_env("ARM_CLIENT_ID"))
    azure_client_secret: SecretStr | None = Field(None, validation_alias=_env("ARM_CLIENT_SECRET"))
    azure_tenant_id: str | None = Field(None, validation_alias=_env("ARM_TENANT_ID"))
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
    # Observability (agent/ledger.py, agent/tracing.py): usage ledger path ("off" disables), MLflow tracing.
    usage_ledger: str | None = Field(None, validation_alias=_env("KB_USAGE_LEDGER"))
    mlflow_tracking_uri: str | None = Field(None, validation_alias=_env("KB_MLFLOW_TRACKING_URI"))
    mlflow_experiment: str | None = Field(None, validation_alias=_env("KB_MLFLOW_EXPERIMENT"))
    # Retrieval (agent/retrieval.py): ranking mode, per-document cap in the top-k, refusal floor.
    search_mode: Literal["dense", "bm25", "hybrid"] = Field("hybrid", validation_alias=_env("KB_SEARCH_MODE"))
    max_per_source: int = Field(3, ge=0, le=50, validation_alias=_env("KB_MAX_PER_SOURCE"))
    min_relevance: float | None = Field(None, ge=0, le=1, validation_alias=_env("KB_MIN_RELEVANCE"))
    # Hybrid fusion (agent/rag/retrieval.py) and the opt-in second stage (agent/rag/rerank.py).
    fusion: Literal["convex", "rrf"] = Field("convex", validation_alias=_env("KB_FUSION"))
    fusion_alpha: float = Field(0.8, ge=0, le=1, validation_alias=_env("KB_FUSION_ALPHA"))
    rrf_k: int = Field(60, ge=1, le=10_000, validation_alias=_env("KB_RRF_K"))
    rrf_bm25_weight: float = Field(1.0, ge=0, le=10, validation_alias=_env("KB_RRF_BM25_WEIGHT"))
    # Page support (agent/rag/search.py support_pages): a page's runner-up chunks lift its chunks.
    page_support: float = Field(0.05, ge=0, le=1, validation_alias=_env("KB_PAGE_SUPPORT"))
    page_support_chunks: int = Field(2, ge=1, le=20, validation_alias=_env("KB_PAGE_SUPPORT_CHUNKS"))
    rerank: Literal["off", "llm"] = Field("off", validation_alias=_env("KB_RERANK"))
    rerank_candidates: int = Field(20, ge=2, le=100, validation_alias=_env("KB_RERANK_CANDIDATES"))
    rerank_timeout: float = Field(20.0, gt=0, le=600, validation_alias=_env("KB_RERANK_TIMEOUT"))
    agent_max_steps: int = Field(8, ge=1, le=100, validation_alias=_env("KB_AGENT_MAX_STEPS"))
    chat_history_tokens: int = Field(6000, ge=0, le=1_000_000, validation_alias=_env("KB_CHAT_HISTORY_TOKENS"))
    # HTTP API (kb serve): callers' keys and limits.
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, validation_alias=_env("KB_API_KEYS")
    )
    # Access control (ingest/access.py): the groups after a key's second ':' (name:key:group|group), read
    # from KB_API_KEYS by _parse_api_key_groups; who may read a document no .kb-access rule covers;
    # the CLI's groups (--as-groups; unset: the CLI reads everything).
    api_key_groups: Annotated[dict[str, frozenset[str]], NoDecode] = Field(
        default_factory=dict, validation_alias=_env("KB_API_KEYS")
    )
    access_default: Literal["all", "none"] = Field("all", validation_alias=_env("KB_ACCESS_DEFAULT"))
    as_groups: Annotated[frozenset[str] | None, NoDecode] = Field(None, validation_alias=_env("KB_AS_GROUPS"))
    access_users: Path | None = Field(None, validation_alias=_env("KB_ACCESS_USERS"))  # forwarded user -> groups
    api_max_body_bytes: int = Field(1_048_576, ge=1024, le=100 * 1_048_576, validation_alias=_env("KB_API_MAX_BODY_BYTES"))
    api_max_question_chars: int = Field(4000, ge=1, le=1_000_000, validation_alias=_env("KB_API_MAX_QUESTION_CHARS"))
    api_max_messages: int = Field(50, ge=1, le=10_000, validation_alias=_env("KB_API_MAX_MESSAGES"))
    api_max_tokens: int = Field(4096, ge=1, le=131_072, validation_alias=_env("KB_API_MAX_TOKENS"))
    api_max_concurrency: int = Field(64, ge=1, le=10_000, validation_alias=_env("KB_API_MAX_CONCURRENCY"))
    # Ingestion and the index (ingest/): Chroma server, size cap, Databricks embedding batches.
    chroma_url: str | None = Field(None, validation_alias=_env("KB_CHROMA_URL"))
    # Databricks Vector Search as the index (ingest/store/vector_search.py); chroma stays the default.
    vector_store: Literal["chroma", "databricks"] = Field("chroma", validation_alias=_env("KB_VECTOR_STORE"))
    vs_index: str | None = Field(None, validation_alias=_env("KB_VS_INDEX"))
    vs_endpoint: str | None = Field(None, validation_alias=_env("KB_VS_ENDPOINT"))
    vs_read_only: bool = Field(False, validation_alias=_env("KB_VS_READ_ONLY"))
    vs_columns: dict[str, str] = Field(default_factory=dict, validation_alias=_env("KB_VS_COLUMNS"))
    max_file_mb: float = Field(50.0, gt=0, le=100_000, validation_alias=_env("KB_MAX_FILE_MB"))
    # Uploads from the web page by 'writer' keys (agent/api/documents.py); unset: <KB_KNOWLEDGE_DIR>/uploads.
    upload_dir: Path | None = Field(None, validation_alias=_env("KB_UPLOAD_DIR"))
    embedding_batch: int = Field(64, ge=1, le=2048, validation_alias=_env("KB_EMBEDDING_BATCH"))
    embedding_concurrency: int = Field(4, ge=1, le=64, validation_alias=_env("KB_EMBEDDING_CONCURRENCY"))
    # Hostile input (ingest/): per-file chunk cap, per-file parse limits (time, memory).
    max_chunks_per_file: int = Field(5000, ge=1, le=10_000_000, validation_alias=_env("KB_MAX_CHUNKS_PER_FILE"))
    parse_timeout: float = Field(60.0, gt=0, le=3600, validation_alias=_env("KB_PARSE_TIMEOUT"))
    parse_memory_mb: int = Field(2048, ge=64, le=1_000_000, validation_alias=_env("KB_PARSE_MEMORY_MB"))
    # HTTP API: host names accepted in the Host header (DNS-rebinding guard); empty = loopback names
    # only when no keys are set, any host when keys are set.
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("KB_API_ALLOWED_HOSTS")
    )
    # HTTP API behind a proxy that authenticates every request and names the user in
    # X-Forwarded-Email (a Databricks App): that user is the caller (agent/api/auth.py).
    trust_forwarded_user: bool = Field(False, validation_alias=_env("KB_TRUST_FORWARDED_USER"))

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _parse_allowed_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

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
        return validate_configured(value)

    @field_validator("api_key_groups", mode="before")
    @classmethod
    def _parse_api_key_groups(cls, value: Any) -> Any:
        """``name:key:hr|legal`` -> {name: {"hr", "legal"}}; no third field -> no group (public only)."""
        if not isinstance(value, str):
            return value
        groups: dict[str, frozenset[str]] = {}
        for position, entry in enumerate((e.strip() for e in value.split(",")), 1):
            if not entry:
                continue
            name, _, rest = (part.strip() for part in entry.partition(":"))
            _, third, names = rest.rpartition(":") if ":" in rest else ("", "", "")
            try:
                groups[name] = parse_groups(names, where=f"entry {position} ('{name}'): ") if third else frozenset()
            except AccessRulesError as exc:
                raise ValueError(f"{exc.message} (the third field, after the key, lists the caller's groups)") from None
        return groups

    @field_validator("as_groups", mode="before")
    @classmethod
    def _parse_as_groups(cls, value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        try:
            return parse_groups(value)
        except AccessRulesError as exc:
            raise ValueError(exc.message) from None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        """``name:key,name2:key2`` (or ``name:key:group|group``) -> {name: key}; messages never echo a key."""
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for position, entry in enumerate((e.strip() for e in value.split(",")), 1):
            if not entry:
                continue
            name, sep, key = (part.strip() for part in entry.partition(":"))
            if ":" in key:  # name:key:groups (groups: _parse_api_key_groups); a key itself has no ':'
                key = key.rpartition(":")[0].strip()
            if not sep or not name or not key:
                raise ValueError(f"entry {position} must look like name:key (comma-separated pairs)")
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
                raise ValueError(f"entry {position}: the name may only use letters, digits and _ . @ -")
            if name in keys:
                raise ValueError(f"the name '{name}' appears twice")
            if key in keys.values():
                raise ValueError(f"entry {position} ('{name}') reuses another caller's key")
            keys[name] = key
        return keys

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

    @field_validator(
        "databricks_host", "databricks_config_profile", "databricks_config_file", "databricks_auth_type",
        "databricks_client_id", "azure_client_id", "azure_tenant_id", mode="before",
    )
    @classmethod
    def _blank_str_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else (value.strip() if isinstance(value, str) else value)

    @field_validator("databricks_host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = value.rstrip("/") if "://" in value else f"https://{value.rstrip('/')}"
        try:
            parsed = urlparse(url)
            parsed.port  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"is not a valid workspace URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be the workspace URL, such as https://adb-123.4.azuredatabricks.net")
        return url

    @field_validator("databricks_client_secret", "azure_client_secret")
    @classmethod
    def _secret_blank_or_masked(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        register_secret(value.get_secret_value().strip())
        return value

    @field_validator("vs_index", "vs_endpoint")
    @classmethod
    def _check_vs_names(cls, value: str | None, info: Any) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if info.field_name == "vs_index" and not re.fullmatch(r"\A[^.\s`]+\.[^.\s`]+\.[^.\s`]+\Z", value):
            raise ValueError("must be the index's full name catalog.schema.name")
        if info.field_name == "vs_endpoint" and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("must be a Vector Search endpoint name (letters, digits, '-', '_')")
        return value

    @field_validator("chroma_url")
    @classmethod
    def _check_chroma_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be the Chroma server's URL, such as http://chroma.internal:8000")
        try:
            parsed.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("index_dir")
    @classmethod
    def _absolute_index_dir(cls, value: Path) -> Path:
        """Absolute (``~`` expanded, not resolved): every message names the folder wherever kb runs."""
        import os

        return Path(os.path.abspath(value.expanduser()))

    @field_validator("min_relevance", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys")
    @classmethod
    def _mask_api_keys_in_logs(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key in value.values():
            register_secret(key.get_secret_value() if isinstance(key, SecretStr) else str(key))
        return value

    @field_validator("databricks_token")
    @classmethod
    def _mask_token_in_logs(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            register_secret(value.get_secret_value().strip())
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
    def uses_token(self) -> bool:
        """The seed's way: a personal access token and a known URL (no SDK needed)."""
        return self.databricks_token is not None and self.serving_base_url is not None

    @property
    def sdk_auth_hinted(self) -> bool:
        """Something the Databricks SDK can authenticate with (profile, OAuth client, Azure, a config
        file, or a host for `databricks auth login`), without asking the SDK (it may do network calls)."""
        if self.uses_token:
            return False
        if any((self.databricks_config_profile, self.databricks_client_id, self.azure_client_id,
                self.databricks_auth_type, self.databricks_host)):
            return True
        config_file = Path(self.databricks_config_file or Path.home() / ".databrickscfg").expanduser()
        try:
            return config_file.is_file()
        except OSError:
            return False

    @property
    def llm_configured(self) -> bool:
        return self.uses_token or self.sdk_auth_hinted

    def missing_llm_settings(self) -> list[str]:
        missing = []
        if self.databricks_token is None:
            missing.append("DATABRICKS_TOKEN")
        if self.serving_base_url is None:
            missing.append("DATABRICKS_HOST (or base_url)")
        return missing


# Field name -> the variable a user sets, for error messages: derived from the fields' aliases.
ENV_NAMES = {
    name: str(field.validation_alias.choices[0])
    for name, field in Settings.model_fields.items()
    if isinstance(field.validation_alias, AliasChoices)
}
_ALIAS_TO_ENV = {alias.lower(): env for env in ENV_NAMES.values() for alias in (env,)}
_ALIAS_TO_ENV["base_url"] = "base_url"


_LOADED: dict[Any, Settings] = {}  # what a load depends on -> its result (see _load_key)


def _load_key(overrides: dict[str, Any]) -> Any:
    """Everything a load reads: the environment, the working directory, its ``.env`` (contents)
    and the overrides; ``None`` when that cannot be a key (an unhashable override, a huge .env)."""
    import os

    try:
        with open(".env", "rb") as file:
            env_file: bytes | None = file.read(65537)
        if len(env_file) > 65536:
            return None
    except OSError:
        env_file = None
    try:
        key = (tuple(sorted(os.environ.items())), os.getcwd(), env_file, tuple(sorted(overrides.items())))
        hash(key)
    except (TypeError, OSError):
        return None
    return key


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and ``.env``; raise ``ConfigError`` naming the variable.

    A load with the same environment, ``.env`` and overrides as an earlier one returns a copy of
    its result (validating settings costs ~3 ms; long-lived callers load them per question)."""
    key = _load_key(overrides)
    earlier = _LOADED.get(key) if key is not None else None
    if earlier is not None:
        return earlier.model_copy(deep=True)
    try:
        settings = Settings(**overrides)
        if key is not None:
            if len(_LOADED) >= 16:
                _LOADED.clear()
            _LOADED[key] = settings.model_copy(deep=True)
        return settings
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = str(error["loc"][0]) if error.get("loc") else "?"
        name = ENV_NAMES.get(loc) or _ALIAS_TO_ENV.get(loc.lower(), loc)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {message}") from None
    except Exception as exc:  # pydantic-settings raises SettingsError for undecodable sources
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())[:200]}") from None


def parse_overrides(specs: list[str] | tuple[str, ...], *, option: str) -> dict[str, str]:
    """``["KB_SEARCH_MODE=bm25", "KB_FUSION_ALPHA=0.6"]`` -> {field name: raw value}; an unknown or
    secret variable, or a spec without ``=``, is a ``ConfigError`` of one line naming it."""
    by_env = {env.lower(): name for name, env in ENV_NAMES.items()}
    # By variable, not by field: one variable can feed several fields (KB_API_KEYS: the keys, a
    # SecretStr, and their groups), and any secret field makes the variable a secret.
    secret = {ENV_NAMES[name].lower() for name, field in Settings.model_fields.items()
              if name in ENV_NAMES and "SecretStr" in str(field.annotation)}
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} '{spec[:80]}': expected KEY=VALUE, e.g. KB_SEARCH_MODE=bm25")
        if key.lower() in secret:
            raise ConfigError(f"{option}: {key[:80]} is a secret and cannot be overridden on the command line")
        name = by_env.get(key.lower())
        if name is None:
            raise ConfigError(f"{option}: unknown setting '{key[:80]}' (use the KB_... names of docs/configuration.md)")
        out[name] = value.strip()
    return out


def settings_with(settings: Settings, overrides: dict[str, str]) -> Settings:
    """The settings ``load_settings`` gives with ``overrides`` (field name -> raw value) on top of the
    environment, validated like it (a bad value is a ``ConfigError`` naming the variable); the
    caller's ``as_groups`` (``--as-groups``) is kept."""
    if not overrides:
        return settings
    base: dict[str, Any] = {"as_groups": settings.as_groups} if settings.as_groups is not None else {}
    return load_settings(**{**base, **overrides})  # an override of KB_AS_GROUPS wins over --as-groups
