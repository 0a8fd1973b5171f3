"""Helpers for end-to-end tests that run a server process: a free loopback port, and waiting until
``kb serve`` answers ``/readyz`` (failing the test with the end of its log if it exits first)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import IO

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, log: IO[str], timeout: float = 120) -> None:
    """Return once ``url``/readyz says 200; fail the test if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"kb serve exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("kb serve did not become ready")
        time.sleep(0.2)
