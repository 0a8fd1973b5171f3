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

from agent.api import create_app
from agent.errors import UsageError
from agent.observability.logs import configure_logging
from agent.observability.tracing import configure_tracing
from agent.settings import Settings, load_settings

SHORT_KEY = 32  # characters; shorter keys get a warning at start (docs/api.md says the same)


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
    if not settings.api_keys and not is_loopback(host) and settings.trust_forwarded_user:
        # A Databricks App: its proxy authenticates every request and names the user.
        warnings.append(f"no KB_API_KEYS on {host}: callers are the users the proxy in front names "
                        "(KB_TRUST_FORWARDED_USER); run so only behind one that authenticates, such as a Databricks App")
    elif not settings.api_keys and not is_loopback(host):
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


def check_port(host: str, port: int) -> None:
    """``UsageError`` (exit 2) when ``host:port`` cannot be listened on: in use, not an address of
    this machine, or a privileged port. Bound and released at once, with ``SO_REUSEADDR`` as uvicorn
    binds (a port whose old connections linger in TIME_WAIT is free); a race with another process
    taking it in between still ends in uvicorn's own error."""
    import errno

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror or exc}", hint="pass an address of this machine with --host") from None
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} is in use: pick another with --port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"port {port} needs privileges to listen on: pick one above 1023 with --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {host}: not an address of this machine",
                             hint="pass one of its addresses (or 0.0.0.0) with --host") from None
        raise UsageError(f"cannot listen on {_display(host)}:{port}: {exc.strerror or exc}") from None
    finally:
        probe.close()


def app_from_env():
    """Factory for uvicorn workers (``--workers N``): each process reads the same environment."""

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
    check_port(host, port)  # a busy port: one error line, before the banner
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

    uvicorn.run(create_app(settings), **common)


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
