"""Run an ASGI app with uvicorn in a background thread on 127.0.0.1 (a real socket, a real server)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class LiveServer:
    """``with LiveServer(app) as server: server.url`` -- the socket is bound before the thread starts,
    so there is no race for the port; the lifespan (index warm-up) has run once ``__enter__`` returns."""

    def __init__(self, app: Any, *, startup_timeout: float = 120.0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.startup_timeout = startup_timeout

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


class TrickleProxy:
    """A loopback TCP proxy whose replies trickle back in small pieces with pauses, so that a
    stream from the Databricks stub reaches the app (and a browser) over time, as from a real model."""

    def __init__(self, target_port: int, *, piece: int = 160, pause: float = 0.03) -> None:
        self.target_port = target_port
        self.piece = piece
        self.pause = pause
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TrickleProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, trickle: bool) -> None:
        try:
            while data := source.recv(65536):
                step = self.piece if trickle else len(data)
                for start in range(0, len(data), step):
                    sink.sendall(data[start:start + step])
                    if trickle:
                        time.sleep(self.pause)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
