"""``kb deploy app --dry-run``: the folder a Databricks App running ``kb serve`` is deployed from.

Written into ``--out`` (default ``databricks-app``):

- ``app.yaml``: ``command`` runs ``kb serve`` (through ``python -m agent.deploy.app_start``, which first
  installs the local model's weights without their torch dependency; from the copied source) on
  ``0.0.0.0`` and the port the App gives (``kb serve`` reads ``DATABRICKS_APP_PORT``); ``env``
  takes the chat (and embeddings) endpoint from the App's serving-endpoint resources and
  ``KB_API_KEYS``, when wanted, from a secret resource (``valueFrom``): no secret is ever written.
  ``KB_TRUST_FORWARDED_USER`` makes the user the App's proxy signs in (``X-Forwarded-Email``) the
  caller in ``usage_context``; ``KB_API_ALLOWED_HOSTS=*`` because only the proxy reaches the App.
- ``app-resources.json``: the App with those resources (``databricks apps create --json @...``),
  built with the Databricks SDK's ``apps`` types.
- ``requirements.txt``: kb's runtime requirements; ``agent/`` and ``ingest/``: kb's source; with the
  local index (not Vector Search) a copy of it in ``index/`` (usage ledger left out), refused when a
  file of it is over the Apps' 10 MB limit per file (a larger corpus belongs in Vector Search).
- ``DEPLOY.md``: the commands to run and the grants to make.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.settings import Settings

CHAT_RESOURCE = "serving-endpoint"
EMBEDDINGS_RESOURCE = "embedding-endpoint"
KEYS_RESOURCE = "api-keys"
PACKAGES = ("agent", "ingest")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "usage.sqlite", "usage.sqlite-wal", "usage.sqlite-shm", "*.lock")
COMMAND = ["python", "-m", "agent.deploy.app_start"]  # kb serve --host 0.0.0.0, after the weights (app_start)
MAX_APP_FILE = 10 * 1024 * 1024  # Databricks Apps refuse a deployment with a file over 10 MB


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, quoted and escaped


def app_yaml(settings: Settings, *, keys_secret: str | None) -> str:
    env: list[tuple[str, str, str]] = [("KB_CHAT_ENDPOINT", "valueFrom", CHAT_RESOURCE)]
    if settings.embeddings == "databricks":
        env += [("KB_EMBEDDINGS", "value", "databricks"), ("KB_EMBEDDING_ENDPOINT", "valueFrom", EMBEDDINGS_RESOURCE)]
    if getattr(settings, "vector_store", "chroma") == "databricks":
        env += [("KB_VECTOR_STORE", "value", "databricks"), ("KB_VS_INDEX", "value", str(settings.vs_index or "")),
                ("KB_VS_ENDPOINT", "value", str(settings.vs_endpoint or ""))]
    else:
        env.append(("KB_INDEX_DIR", "value", "index"))
    env += [("KB_SEARCH_MODE", "value", settings.search_mode), ("KB_TRUST_FORWARDED_USER", "value", "true"),
            ("KB_API_ALLOWED_HOSTS", "value", "*")]
    if settings.usage_context != {"project": "kb"}:
        env.append(("KB_USAGE_CONTEXT", "value", json.dumps(settings.usage_context)))
    if keys_secret:
        env.append(("KB_API_KEYS", "valueFrom", KEYS_RESOURCE))
    lines = [
        "# kb serve as a Databricks App (written by `kb deploy app --dry-run`).",
        "# The port is the App's: kb serve reads DATABRICKS_APP_PORT. Secrets come from resources (valueFrom).",
        "command: [" + ", ".join(_yaml_string(part) for part in COMMAND) + "]",
        "env:",
    ]
    for name, kind, value in env:
        lines += [f"  - name: {_yaml_string(name)}", f"    {kind}: {_yaml_string(value)}"]
    return "\n".join(lines) + "\n"


def app_spec(settings: Settings, *, name: str, keys_secret: str | None) -> dict[str, Any]:
    """The App and its resources as the Apps API takes them (``databricks apps create --json``)."""
    from databricks.sdk.service import apps

    query = apps.AppResourceServingEndpointServingEndpointPermission.CAN_QUERY
    resources = [apps.AppResource(name=CHAT_RESOURCE, serving_endpoint=apps.AppResourceServingEndpoint(
        name=settings.chat_endpoint, permission=query))]
    if settings.embeddings == "databricks":
        resources.append(apps.AppResource(name=EMBEDDINGS_RESOURCE, serving_endpoint=apps.AppResourceServingEndpoint(
            name=settings.embedding_endpoint, permission=query)))
    if keys_secret:
        scope, key = keys_secret.split("/", 1)
        resources.append(apps.AppResource(name=KEYS_RESOURCE, secret=apps.AppResourceSecret(
            scope=scope, key=key, permission=apps.AppResourceSecretSecretPermission.READ)))
    return apps.App(name=name, description="kb: answers over internal documents", resources=resources).as_dict()


def requirements() -> str:
    try:
        declared = metadata.requires("kb") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - kb runs from a checkout without install
        declared = []
    kept = [line.split(";")[0].strip() for line in declared if "extra ==" not in line]
    # Not the local model's weights package: it declares torch; agent.deploy.app_start installs it --no-deps.
    return "# kb's runtime requirements (pyproject.toml); the source is in agent/ and ingest/\n" + "\n".join(kept) + "\n"


def _too_big(index: Path) -> tuple[Path, int] | None:
    """The largest file the index copy would hold over ``MAX_APP_FILE`` (what ``IGNORED`` leaves out,
    such as the usage ledger, is not copied)."""
    sizes = [(path, path.stat().st_size) for path in index.rglob("*")
             if path.is_file() and not IGNORED(str(path.parent), [path.name])]
    over = [(path, size) for path, size in sizes if size > MAX_APP_FILE]
    return max(over, key=lambda item: item[1]) if over else None


def _notes(name: str, settings: Settings, keys_secret: str | None, out: Path) -> str:
    vector_search = getattr(settings, "vector_store", "chroma") == "databricks"
    grants = [f"- `CAN_QUERY` on the serving endpoint `{settings.chat_endpoint}` (the `{CHAT_RESOURCE}` resource)"]
    if settings.embeddings == "databricks":
        grants.append(f"- `CAN_QUERY` on `{settings.embedding_endpoint}` (the `{EMBEDDINGS_RESOURCE}` resource)")
    if vector_search:
        grants.append(f"- to the App's service principal: `CAN_USE` on the Vector Search endpoint `{settings.vs_endpoint}` "
                      f"and `SELECT` on the index `{settings.vs_index}` (with `USE CATALOG` / `USE SCHEMA`)")
    else:
        grants.append("- none for the index: a copy of the local index is in `index/` (Vector Search is the way "
                      "for a corpus that grows: KB_VECTOR_STORE=databricks)")
    if keys_secret:
        grants.append(f"- `READ` on the secret `{keys_secret}` holding KB_API_KEYS (the `{KEYS_RESOURCE}` resource)")
    return "\n".join([
        f"# Deploying kb as the Databricks App `{name}`",
        "",
        "Written by `kb deploy app --dry-run`. Run from the folder that holds it:",
        "",
        "```",
        f"databricks apps create --json @{out.name}/app-resources.json",
        f"databricks sync {out.name} /Workspace/Users/<you>/{name}",
        f"databricks apps deploy {name} --source-code-path /Workspace/Users/<you>/{name}",
        "```",
        "",
        "The App's resources give it:",
        *grants,
        "",
        "Signed-in users reach kb through the App's URL (permission `CAN_USE` on the App); each request's",
        "`usage_context.caller` is the user the App forwards (`X-Forwarded-Email`).",
        "",
    ])


def write_app(settings: Settings, out: Path, *, name: str = "kb", keys_secret: str | None = None) -> list[Path]:
    """Write the App's folder (see the module docstring); the files written, in order."""
    if keys_secret is not None and (keys_secret.count("/") != 1 or not all(keys_secret.split("/"))):
        raise UsageError(f"invalid --api-keys-secret '{keys_secret}': use SCOPE/KEY (a Databricks secret)")
    if getattr(settings, "vector_store", "chroma") == "databricks" and not (settings.vs_index and settings.vs_endpoint):
        raise UsageError("KB_VECTOR_STORE=databricks needs KB_VS_INDEX and KB_VS_ENDPOINT for the App")
    root = Path(__file__).resolve().parent.parent.parent
    if out.resolve() == root or root.is_relative_to(out.resolve()) or out.resolve().is_relative_to(root / "agent") \
            or out.resolve().is_relative_to(root / "ingest"):
        raise UsageError(f"--out {out} would overwrite kb's own source: choose a new folder")
    index = Path(settings.index_dir)
    uses_local_index = getattr(settings, "vector_store", "chroma") != "databricks"
    if uses_local_index and not index.is_dir():
        raise UsageError(f"no index at KB_INDEX_DIR ({index}): run 'kb ingest' first, or use KB_VECTOR_STORE=databricks")
    if uses_local_index:
        too_big = _too_big(index)
        if too_big:
            path, size = too_big
            raise UsageError(f"{path} is {size / 1024 / 1024:.0f} MB: Databricks Apps refuse files over 10 MB",
                             hint="put the index in Vector Search (KB_VECTOR_STORE=databricks), see docs/vector-search.md")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    files = {
        "app.yaml": app_yaml(settings, keys_secret=keys_secret),
        "app-resources.json": json.dumps(app_spec(settings, name=name, keys_secret=keys_secret), indent=2) + "\n",
        "requirements.txt": requirements(),
        "DEPLOY.md": _notes(name, settings, keys_secret, out),
    }
    for filename, text in files.items():
        (out / filename).write_text(text, encoding="utf-8")
        written.append(out / filename)
    for package in PACKAGES:
        shutil.rmtree(out / package, ignore_errors=True)
        shutil.copytree(root / package, out / package, ignore=IGNORED)
        written.append(out / package)
    if uses_local_index:
        shutil.rmtree(out / "index", ignore_errors=True)
        shutil.copytree(index, out / "index", ignore=IGNORED)
        written.append(out / "index")
    return written
