"""``kb serve``: check that the bind is safe, then run the app with uvicorn.

Listening on anything but a loopback address without ``KB_API_KEYS`` would publish the knowledge
base (and the Databricks budget) to the network: it is refused unless ``--insecure`` is given.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

from agent.errors import UsageError
from agent.settings import Settings, load_settings

SHORT_KEY = 16  # characters; shorter keys get a warning at start


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback one (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(settings: Settings, host: str, insecure: bool) -> list[str]:
    """Refuse an unsafe bind (UsageError); return warnings to print."""
    warnings = []
    if not settings.api_keys and not is_loopback(host):
        if not insecure:
            raise UsageError(
                f"refusing to listen on {host} without API keys: anyone who can reach it could use the knowledge "
                "base and your Databricks endpoint",
                hint="set KB_API_KEYS=name:key,... (see README, 'kb serve'), bind to 127.0.0.1, or pass --insecure",
            )
        warnings.append(f"no KB_API_KEYS: the API on {host} is open to anyone who can reach it (--insecure)")
    short = [name for name, key in settings.api_keys.items() if len(key.get_secret_value()) < SHORT_KEY]
    if short:
        warnings.append(f"short API key(s) for {', '.join(short)}: use at least {SHORT_KEY} random characters "
                        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return warnings


def app_from_env():
    """Factory for uvicorn workers (``--workers N``): each process reads the same environment."""
    from agent.api import create_app
    from agent.observability.logs import configure_logging

    from agent.observability.tracing import configure_tracing

    configure_logging(verbose=os.environ.get("KB_SERVE_VERBOSE") == "1", json_format=os.environ.get("KB_SERVE_LOG_JSON") == "1")
    settings = load_settings()
    configure_tracing(settings)  # each worker process traces like the single-process server does
    return create_app(settings)


def one_thread_per_blas() -> None:
    """Numerical libraries (the query embedding's matrix products) get one thread each: many
    requests run at once, and a thread pool per product only spins and contends (set before numpy
    loads; an explicit OPENBLAS_NUM_THREADS / OMP_NUM_THREADS wins)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def serve(settings: Settings, *, host: str, port: int, insecure: bool = False, workers: int = 1,
          log_level: str = "info") -> None:
    """Run until interrupted. ``log_level`` is uvicorn's (its access log is at info)."""
    import uvicorn

    one_thread_per_blas()

    for line in check_bind(settings, host, insecure):
        logging.getLogger("kb.api").warning(line)
    callers = ", ".join(settings.api_keys) if settings.api_keys else "none (open)"
    print(f"kb serve: http://{_display(host)}:{port}/  (callers: {callers}; workers: {workers})", file=sys.stderr)
    common = {"host": host, "port": port, "log_level": log_level, "proxy_headers": False, "server_header": False,
              "timeout_graceful_shutdown": 10}
    if workers > 1:  # the workers are new processes: hand them kb's logging choices
        root = logging.getLogger()
        os.environ["KB_SERVE_VERBOSE"] = "1" if root.level <= logging.INFO else "0"
        os.environ["KB_SERVE_LOG_JSON"] = "1" if any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers) else "0"
        uvicorn.run("agent.api.server:app_from_env", factory=True, workers=workers, **common)
        return
    from agent.api import create_app

    uvicorn.run(create_app(settings), **common)


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
