"""How kb authenticates to a Databricks workspace: the Databricks SDK's unified authentication.

Two routes, one result (``Connection``):

- **A personal access token with a known URL** (``DATABRICKS_TOKEN`` and ``DATABRICKS_HOST`` or
  ``base_url``): the seed's way, unchanged, and without importing the SDK (it costs start-up time).
- **Everything else goes through ``databricks.sdk.core.Config``**, with the SDK's own precedence:
  explicit settings, then the environment, then the profile in ``~/.databrickscfg``
  (``DATABRICKS_CONFIG_PROFILE`` / ``--profile``); among methods, the SDK's order (PAT, basic,
  OAuth M2M with ``DATABRICKS_CLIENT_ID``/``DATABRICKS_CLIENT_SECRET``, the Azure methods, the token
  cache of ``databricks auth login``...). kb writes no OAuth of its own.

OAuth access tokens live about an hour, so the header is produced per request: ``SdkAuth`` is an
``httpx.Auth`` that asks ``Config.authenticate()`` (which returns a cached token and refreshes it
when it expires) for every chat and embeddings request. Every token it hands out is registered with
``agent.observability.logs`` so that it is redacted from logs, errors and output like the PAT.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from agent import __version__
from agent.databricks.httpx_compat import httpx_module
from agent.errors import AuthError, ConfigError
from agent.observability.logs import redact, register_secret
from agent.settings import Settings

SERVING_SUFFIX = "/serving-endpoints"
PLACEHOLDER_KEY = "databricks-sdk-auth"  # openai needs an api_key; SdkAuth replaces the header


@dataclass(frozen=True)
class Connection:
    """Where and how to reach a workspace's serving endpoints."""

    base_url: str  # https://<host>/serving-endpoints (or the user's base_url)
    host: str | None  # the workspace URL
    auth_type: str  # "pat" or the SDK's name: "oauth-m2m", "databricks-cli", "azure-client-secret"...
    api_key: Any  # the PAT (SecretStr) or a placeholder when ``auth`` sets the header
    auth: Any = None  # an httpx Auth asking the SDK per request, or None
    config: Any = None  # the SDK Config (for kb doctor's REST checks), or None on the PAT route

    def describe(self) -> str:
        return f"{self.auth_type} at {self.host or self.base_url}"


def host_of(base_url: str | None) -> str | None:
    """The workspace URL behind a serving base URL (``.../serving-endpoints`` removed)."""
    if not base_url:
        return None
    url = base_url.rstrip("/")
    if url.endswith(SERVING_SUFFIX):
        url = url[: -len(SERVING_SUFFIX)]
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}" if parsed.scheme and parsed.netloc else None


_CONNECTIONS: dict[Any, Connection] = {}
_LOCK = threading.Lock()


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def _cache_key(settings: Settings) -> tuple:
    def digest(value: Any) -> str | None:
        text = _secret(value)
        return hashlib.sha256(text.encode()).hexdigest() if text else None

    return (
        settings.base_url, settings.databricks_host, digest(settings.databricks_token),
        settings.databricks_config_profile, settings.databricks_config_file, settings.databricks_auth_type,
        settings.databricks_client_id, digest(settings.databricks_client_secret), settings.azure_client_id,
        digest(settings.azure_client_secret), settings.azure_tenant_id, settings.timeout,
    )


def connect(settings: Settings) -> Connection:
    """The connection the settings describe (one per process and configuration).

    Raises ``ConfigError`` when nothing to authenticate with is configured, ``AuthError`` when the
    SDK could not authenticate (wrong client secret, expired ``databricks auth login``...)."""
    key = _cache_key(settings)
    with _LOCK:
        known = _CONNECTIONS.get(key)
        if known is not None:
            return known
        connection = _connect(settings)
        if len(_CONNECTIONS) >= 8:
            _CONNECTIONS.clear()
        _CONNECTIONS[key] = connection
        return connection


def reset_connections() -> None:
    """Forget resolved connections (tests; a process that changed its credentials)."""
    with _LOCK:
        _CONNECTIONS.clear()


def _connect(settings: Settings) -> Connection:
    if settings.uses_token:
        base_url = settings.serving_base_url
        return Connection(base_url=base_url, host=host_of(base_url), auth_type="pat", api_key=settings.databricks_token)
    if not settings.sdk_auth_hinted:
        missing = " and ".join(settings.missing_llm_settings())
        raise ConfigError(
            f"no Databricks credentials configured: set {missing}, or a profile (DATABRICKS_CONFIG_PROFILE, "
            "see `databricks auth login`), or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET "
            "(README, Authentication)"
        )
    config = sdk_config(settings)
    host = (config.host or "").rstrip("/") or None
    base_url = settings.base_url or (f"{host}{SERVING_SUFFIX}" if host else None)
    if not base_url:
        raise ConfigError("the Databricks profile has no host: set DATABRICKS_HOST or base_url")
    auth = make_auth(config)
    try:
        auth.headers()  # the first token now: a wrong secret or an expired login fails here, in one line
    except AuthError as exc:
        raise auth_failure(exc, settings) from None
    return Connection(
        base_url=base_url, host=host, auth_type=str(config.auth_type or "default"),
        api_key=PLACEHOLDER_KEY, auth=auth, config=config,
    )


def sdk_config(settings: Settings) -> Any:
    """A resolved ``databricks.sdk.core.Config`` (authentication chosen and tested by the SDK)."""
    import logging

    sdk_log = logging.getLogger("databricks.sdk")
    if sdk_log.level == logging.NOTSET:  # its warnings are kb's to explain (one error line), not to print
        sdk_log.setLevel(logging.ERROR)
    try:
        from databricks.sdk.core import Config
    except ImportError:  # pragma: no cover - a core dependency
        raise ConfigError("databricks-sdk is not installed: pip install databricks-sdk") from None

    host = settings.databricks_host or host_of(settings.base_url)
    values = {
        "host": host,
        "token": _secret(settings.databricks_token),
        "profile": settings.databricks_config_profile,
        "config_file": settings.databricks_config_file,
        "auth_type": settings.databricks_auth_type,
        "client_id": settings.databricks_client_id,
        "client_secret": _secret(settings.databricks_client_secret),
        "azure_client_id": settings.azure_client_id,
        "azure_client_secret": _secret(settings.azure_client_secret),
        "azure_tenant_id": settings.azure_tenant_id,
    }
    # The SDK retries failed auth calls for up to 300 s by default: keep a wrong host from hanging kb.
    limits = {"http_timeout_seconds": int(max(1, settings.timeout)), "retry_timeout_seconds": int(max(5, min(60, settings.timeout * 2)))}
    try:
        return Config(**{k: v for k, v in values.items() if v is not None}, **limits,
                      product="kb", product_version=__version__)
    except Exception as exc:  # the SDK raises ValueError (and others) with a multi-line explanation
        raise auth_failure(exc, settings) from None


def sdk_message(exc: BaseException) -> str:
    """The SDK's error text on one line, secrets redacted, without the config dump it appends."""
    text = " ".join(redact(str(exc)).split())
    for marker in (" Config: ", ". Config: "):
        if marker in text:
            text = text.split(marker, 1)[0]
    return text


def auth_failure(exc: BaseException, settings: Settings) -> Exception:
    """One clear line for a failed SDK authentication, secrets redacted."""
    text = sdk_message(exc)
    lowered = text.lower()
    if "cannot configure default credentials" in lowered:
        return ConfigError(
            "no Databricks credentials found: set DATABRICKS_TOKEN, a profile (DATABRICKS_CONFIG_PROFILE, "
            "`databricks auth login`), or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (README, Authentication)"
        )
    profile = settings.databricks_config_profile
    if "invalid_client" in lowered or "client authentication failed" in lowered:
        return AuthError(
            "Databricks rejected the OAuth client credentials (invalid_client)",
            hint="check DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a secret of the service principal)",
        )
    if "databricks auth login" in lowered or "refresh token" in lowered or "cannot get access token" in lowered:
        login = f"databricks auth login --profile {profile}" if profile else "databricks auth login --host <workspace-url>"
        return AuthError(f"the Databricks sign-in has expired or is missing ({text[:400]})", hint=f"run `{login}`")
    if "has no" in lowered and "profile" in lowered or "resolve: " in lowered and "profile" in lowered:
        return ConfigError(f"Databricks profile problem: {text[:300]}", hint="check DATABRICKS_CONFIG_PROFILE / --profile and ~/.databrickscfg")
    return AuthError(f"Databricks authentication failed: {text[:300]}")


def make_auth(config: Any) -> Any:
    """An ``httpx.Auth`` (of the library openai uses) that sets the SDK's headers on every request."""
    httpx = httpx_module()

    class SdkAuth(httpx.Auth):
        """Asks the SDK for fresh headers per request (tokens are cached and refreshed by the SDK)."""

        def __init__(self) -> None:
            self._last = ""

        def headers(self) -> dict[str, str]:
            try:
                headers = config.authenticate()
            except Exception as exc:  # refresh failed: a revoked secret, an expired login...
                raise AuthError(f"Databricks authentication failed: {sdk_message(exc)[:300]}") from None
            value = headers.get("Authorization", "")
            if value != self._last:
                self._last = value
                token = value.split(" ", 1)[1] if " " in value else value
                if token:
                    register_secret(token)
            return headers

        def auth_flow(self, request: Any) -> Any:
            for name, value in self.headers().items():
                request.headers[name] = value
            yield request

        def __repr__(self) -> str:
            return f"SdkAuth({config.auth_type})"

    return SdkAuth()
