"""``kb doctor``: check, in order, everything kb needs, and say how to fix what fails.

Each check gives a ``Check`` (ok / fail / skip, a one-line detail, a fix). A check that depends on an
earlier failed one is skipped with the reason, so the first failure is the one to fix. Remote checks
use the Databricks SDK's ``WorkspaceClient`` (the serving-endpoints and current-user APIs) with the
same credentials as the chat model; nothing here prints a secret (messages pass ``agent.observability.logs.redact``).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.databricks.auth import connect, sdk_config, sdk_message
from agent.databricks.llm import build_llm
from agent.errors import KbError
from agent.rag.retrieval import build_embeddings
from agent.settings import Settings, load_settings
from agent.usage.ledger import ledger_path
from ingest.errors import describe_remote_failure
from ingest.store.chroma import model_id_of
from ingest.store.snapshot import index_summary

CHAT_TASK = "llm/v1/chat"
EMBEDDINGS_TASK = "llm/v1/embeddings"


@dataclass
class Check:
    name: str
    status: str  # "ok", "fail" or "skip"
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, {})}


def _one_line(exc: BaseException) -> str:
    return sdk_message(exc)[:300]


class Doctor:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.settings: Settings | None = None
        self.connection: Any = None
        self.client: Any = None  # databricks.sdk.WorkspaceClient
        self.endpoints: list[Any] | None = None

    def add(self, name: str, status: str, detail: str, fix: str | None = None, **data: Any) -> Check:
        check = Check(name, status, detail, fix, data)
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    # ------------------------------------------------------------ the checks, in order
    def run(self) -> list[Check]:
        self.check_settings()
        self.check_auth()
        self.check_workspace()
        self.check_chat_endpoint()
        self.check_embeddings_endpoint()
        self.check_chat_call()
        self.check_index()
        self.check_ledger()
        self.check_tracing()
        return self.checks

    def check_settings(self) -> None:
        try:
            self.settings = load_settings()
        except KbError as exc:
            self.add("settings", "fail", str(exc), "fix the variable named above (README, Configuration)")
            return
        base_url = self.settings.base_url
        if base_url and not base_url.rstrip("/").endswith("/serving-endpoints"):
            self.add("settings", "fail", f"base_url {base_url} does not end with /serving-endpoints",
                     f"set base_url={base_url.rstrip('/')}/serving-endpoints (or unset it and set DATABRICKS_HOST)")
            return
        self.add("settings", "ok", "parsed (environment and .env)")

    def _skip(self, name: str, why: str) -> None:
        self.add(name, "skip", why)

    def check_auth(self) -> None:
        if self.settings is None:
            return self._skip("authentication", "needs valid settings")
        if not self.settings.llm_configured:
            return self.add(
                "authentication", "fail", "no Databricks credentials configured",
                "set DATABRICKS_HOST and DATABRICKS_TOKEN, or run `databricks auth login` and set "
                "DATABRICKS_CONFIG_PROFILE, or set DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET",
            )

        try:
            self.connection = connect(self.settings)
        except KbError as exc:
            return self.add("authentication", "fail", exc.message, exc.hint or "see README, Authentication")
        profile = self.settings.databricks_config_profile
        self.add("authentication", "ok", f"{self.connection.auth_type}" + (f" (profile {profile})" if profile else "")
                 + f", serving URL {self.connection.base_url}", auth_type=self.connection.auth_type)

    def _workspace_client(self) -> Any:
        from databricks.sdk import WorkspaceClient

        config = self.connection.config
        if config is None:  # the PAT route has no SDK config: make one for the REST checks
            config = sdk_config(self.settings.model_copy(update={"databricks_host": self.connection.host}))
        return WorkspaceClient(config=config)

    def check_workspace(self) -> None:
        if self.connection is None:
            return self._skip("workspace", "needs authentication")
        host = self.connection.host
        try:
            import httpx

            started = time.perf_counter()
            httpx.get(host, timeout=min(10.0, self.settings.timeout), follow_redirects=False)
            reach_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the finding
            return self.add("workspace", "fail", f"cannot reach {host} ({type(exc).__name__})",
                            "check DATABRICKS_HOST / base_url, your network, VPN or proxy")
        try:
            client = self._workspace_client()
            me = client.current_user.me()
            self.client = client
        except Exception as exc:  # noqa: BLE001
            return self.add("workspace", "fail", f"{host} is reachable but rejected the credentials: {_one_line(exc)}",
                            _auth_fix(self.settings, self.connection))
        who = getattr(me, "user_name", None) or getattr(me, "display_name", None) or "?"
        kind = "service principal" if _looks_like_application_id(who) else "user"
        self.add("workspace", "ok", f"{host} reachable ({reach_ms:.0f} ms); signed in as {kind} {who}", user=who)

    def _endpoints(self) -> list[Any]:
        if self.endpoints is None:
            self.endpoints = list(self.client.serving_endpoints.list())
        return self.endpoints

    def _ready(self, task: str) -> list[str]:
        try:
            return sorted(e.name for e in self._endpoints() if _task(e) == task and _state(e) == "READY")
        except Exception:  # noqa: BLE001 - a listing is a hint only
            return []

    def _check_endpoint(self, name: str, what: str, task: str, variable: str) -> bool:
        from databricks.sdk.errors import NotFound

        try:
            endpoint = self.client.serving_endpoints.get(name)
        except NotFound:
            ready = self._ready(task)
            close = difflib.get_close_matches(name, ready, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listing = ", ".join(ready[:12]) or "none"
            self.add(what, "fail", f"serving endpoint '{name}' does not exist in this workspace",
                     f"{hint}set {variable} to one of the READY {task} endpoints: {listing}")
            return False
        except Exception as exc:  # noqa: BLE001
            self.add(what, "fail", f"cannot read serving endpoint '{name}': {_one_line(exc)}",
                     "check that the principal may view serving endpoints")
            return False
        state, kind = _state(endpoint), _task(endpoint)
        if kind and kind != task:
            ready = ", ".join(self._ready(task)[:12]) or "none"
            self.add(what, "fail", f"'{name}' is a {kind} endpoint, not {task}", f"set {variable} to one of: {ready}")
            return False
        if state != "READY":
            ready = ", ".join(self._ready(task)[:12]) or "none"
            self.add(what, "fail", f"'{name}' is {state or 'not ready'}", f"wait until it is READY, or set {variable} to one of: {ready}")
            return False
        self.add(what, "ok", f"'{name}' is READY ({kind or task})")
        return True

    def check_chat_endpoint(self) -> None:
        if self.client is None:
            return self._skip("chat endpoint", "needs the workspace")
        self.chat_ok = self._check_endpoint(self.settings.chat_endpoint, "chat endpoint", CHAT_TASK, "KB_CHAT_ENDPOINT")

    def check_embeddings_endpoint(self) -> None:
        if self.settings is None or self.settings.embeddings != "databricks":
            return self._skip("embeddings endpoint", "local embeddings (KB_EMBEDDINGS=local)")
        if self.client is None:
            return self._skip("embeddings endpoint", "needs the workspace")
        name = self.settings.embedding_endpoint
        if not self._check_endpoint(name, "embeddings endpoint", EMBEDDINGS_TASK, "KB_EMBEDDING_ENDPOINT"):
            return

        try:
            dimension = len(build_embeddings(self.settings, command="doctor").embed_query("kb doctor"))
        except Exception as exc:  # noqa: BLE001
            self.checks[-1] = Check("embeddings endpoint", "fail", f"'{name}' failed a test call: {_one_line(exc)}")
            return
        index = index_summary(self.settings.index_dir) or {}
        if index.get("dimension") and index["dimension"] != dimension:
            self.checks[-1] = Check("embeddings endpoint", "fail",
                                    f"'{name}' returns {dimension}-dimensional vectors; the index holds {index['dimension']}",
                                    "run `kb ingest --rebuild` (or set KB_EMBEDDING_ENDPOINT to the index's model)")
            return
        self.checks[-1].detail += f", {dimension} dimensions" + (" (matches the index)" if index.get("dimension") else "")

    def check_chat_call(self) -> None:
        if self.connection is None:
            return self._skip("chat call", "needs authentication")
        if self.client is not None and not getattr(self, "chat_ok", False):
            return self._skip("chat call", "needs a READY chat endpoint")

        try:
            llm = build_llm(self.settings, command="doctor", max_tokens=8, max_retries=0)
            started = time.perf_counter()
            reply = llm.invoke("Reply with the single word OK.")
            latency = (time.perf_counter() - started) * 1000
        except Exception as exc:  # noqa: BLE001

            error = describe_remote_failure(exc, what="chat", endpoint=self.settings.chat_endpoint,
                                            base_url=self.connection.base_url)
            return self.add("chat call", "fail", _one_line(error), getattr(error, "hint", None))
        usage = getattr(reply, "usage_metadata", None) or {}
        self.add("chat call", "ok", f"answered in {latency:.0f} ms ({usage.get('total_tokens', '?')} tokens, usage_context sent)",
                 latency_ms=round(latency, 1))

    def check_index(self) -> None:
        if self.settings is None:
            return self._skip("index", "needs valid settings")
        if self.settings.chroma_url:
            return self._skip("index", f"Chroma server at {self.settings.chroma_url} (checked by kb search)")
        if self.settings.vector_store == "databricks":
            return self._skip("index", f"Vector Search index {self.settings.vs_index} (checked by kb search)")

        where = Path(self.settings.index_dir).resolve()
        index = index_summary(where)
        if index is None:
            return self.add("index", "fail", f"no index at {where}", "run `kb ingest`")
        try:
            expected = model_id_of(build_embeddings(self.settings, command="doctor")) if self.settings.embeddings == "local" \
                else f"databricks:{self.settings.embedding_endpoint}"
        except Exception:  # noqa: BLE001
            expected = None
        if expected and index.get("model_id") and index["model_id"] != expected:
            return self.add("index", "fail", f"the index at {where} was built with {index['model_id']}, not {expected}",
                            "run `kb ingest --rebuild`, or set KB_EMBEDDINGS / KB_EMBEDDING_ENDPOINT back")
        fresh = index["snapshot_fresh"]
        self.add("index", "ok", f"{index['count']} chunks at {where}, {index.get('model_id')}; "
                 + ("snapshot fresh" if fresh else "snapshot stale (queries use Chroma; `kb ingest` refreshes it)"),
                 chunks=index["count"], snapshot_fresh=fresh)

    def check_ledger(self) -> None:
        if self.settings is None:
            return self._skip("usage ledger", "needs valid settings")
        import sqlite3

        path = ledger_path(self.settings)
        if path is None:
            return self._skip("usage ledger", "off (KB_USAGE_LEDGER=off)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=5)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            return self.add("usage ledger", "fail", f"cannot write {path}: {exc}", "set KB_USAGE_LEDGER to a writable file, or off")
        self.add("usage ledger", "ok", f"writable at {path}")

    def check_tracing(self) -> None:
        uri = self.settings.mlflow_tracking_uri if self.settings else None
        if not uri:
            return self._skip("MLflow tracing", "not configured (KB_MLFLOW_TRACKING_URI)")
        try:
            import mlflow
        except ImportError:
            return self.add("MLflow tracing", "fail", "KB_MLFLOW_TRACKING_URI is set but MLflow is not installed",
                            "pip install 'kb[mlflow]'")
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001
            return self.add("MLflow tracing", "fail", f"cannot reach {uri}: {_one_line(exc)}", "check KB_MLFLOW_TRACKING_URI")
        self.add("MLflow tracing", "ok", f"{uri} reachable (mlflow {mlflow.__version__})")


def _state(endpoint: Any) -> str | None:
    state = getattr(endpoint, "state", None)
    ready = getattr(state, "ready", None)
    return getattr(ready, "value", ready)


def _task(endpoint: Any) -> str | None:
    return getattr(endpoint, "task", None)


def _looks_like_application_id(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", name or ""))


def _auth_fix(settings: Settings, connection: Any) -> str:
    kind = getattr(connection, "auth_type", "")
    profile = settings.databricks_config_profile
    if kind == "pat":
        return "DATABRICKS_TOKEN is invalid or expired for this workspace: create a new personal access token"
    if kind == "oauth-m2m":
        return "check DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET and that the service principal is in this workspace"
    if kind == "databricks-cli":
        return f"run `databricks auth login{' --profile ' + profile if profile else ''}` again"
    return "check the credentials of the resolved method (README, Authentication)"


def run_doctor() -> tuple[bool, list[Check]]:
    doctor = Doctor()
    doctor.run()
    return doctor.ok, doctor.checks
