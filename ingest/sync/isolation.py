"""Parse untrusted files in a child process under a memory and a time limit.

A hostile or just unlucky file (a decompression bomb, input that sends a parser or a regular
expression into a near-endless loop, a crash in C code) must cost one skipped file, never the run
or the machine. ``ParseWorker`` keeps **one long-lived child process** that loads and splits files
one at a time:

- the child limits its own address space (``RLIMIT_AS``, else ``RLIMIT_DATA``) to
  ``memory_mb`` before reading anything, so an allocation past it raises ``MemoryError`` there
  (reported as a skipped file) instead of swapping the machine;
- the parent waits at most ``timeout`` seconds for each file, then kills the child (``SIGKILL``:
  a parser stuck in C code holding the GIL cannot ignore it) and reports the file as skipped;
- a child that died (killed, out of memory, crashed) is replaced on the next file.

The child starts on the first file that needs parsing, so a re-run where nothing changed starts
no process at all; one start (~0.2 s) is then shared by every file of the run.

Hand-written (~150 lines) rather than ``multiprocessing`` / ``concurrent.futures`` / ``pebble``:
a ``ProcessPoolExecutor`` cannot kill one hung task (a killed worker breaks the whole pool), and
the spawn-based pools re-import the caller's ``__main__`` in every child. Here the child is a
plain ``python -m ingest.sync.isolation`` talking length-prefixed pickle frames over its stdin/stdout;
its rlimits are set by the child itself (no ``preexec_fn``, which is unsafe in a parent that has
threads, as Chroma's client does). The frames come from kb's own code in the child, never from a
document, so unpickling them trusts nothing the files control.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest import loaders
from ingest.documents import DEFAULT_MAX_FILE_BYTES, SkipFile, SourceFile
from ingest.errors import IngestError
from ingest.split import split_document

_HEADER = struct.Struct("!Q")
_START_TIMEOUT = 60.0  # seconds for the child to import the loaders and say it is ready


@dataclass(frozen=True)
class ParseLimits:
    """Per-file limits of parsing (``KB_PARSE_TIMEOUT``, ``KB_PARSE_MEMORY_MB``).

    ``extra_loaders`` maps a file suffix to ``"module:function"`` loaders registered in the child
    (the loader signature of ``ingest.loaders``); the tests use it to plant misbehaving parsers.
    """

    timeout: float = 60.0
    memory_mb: int = 2048
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    extra_loaders: dict[str, str] = field(default_factory=dict)


def parse_file(file: SourceFile, max_bytes: int, memory_mb: int | None = None) -> tuple[str, list[Any]]:
    """Load and split one file in this process: (title, chunks), or ``SkipFile``."""
    document = loaders.load(file, max_bytes=max_bytes, memory_mb=memory_mb)
    try:
        return document.title, split_document(document)
    except MemoryError:
        raise SkipFile(_memory_reason(memory_mb)) from None
    except RecursionError:
        raise SkipFile("too complex to split (RecursionError)") from None


def _memory_reason(memory_mb: int | None) -> str:
    limit = f" (KB_PARSE_MEMORY_MB={memory_mb})" if memory_mb else ""
    return f"parsing needs more memory than allowed{limit}"


class ParseWorker:
    """Loads and splits files in a child process; ``parse`` returns (title, chunks) or raises ``SkipFile``."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self._child: subprocess.Popen | None = None
        self.started = 0  # children started (1 + restarts after a kill or a crash)

    def __enter__(self) -> ParseWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the child's life

    def _start(self) -> subprocess.Popen:
        import tempfile

        package_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        config = pickle.dumps((self.limits.memory_mb, dict(self.limits.extra_loaders)))
        with tempfile.TemporaryFile() as errors:  # why a start failed; the child silences itself once ready
            child = subprocess.Popen(
                [sys.executable, "-m", "ingest.sync.isolation", config.hex()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env, close_fds=True,
            )
            self.started += 1
            try:
                reply = self._receive(child, _START_TIMEOUT)
            except (_Died, _TimedOut):
                reply = None
            if reply != ("ready",):
                self._kill(child)
                errors.seek(0)
                lines = errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
                detail = f" ({' '.join(lines[-1].split())[:200]})" if lines else ""
                raise IngestError(
                    f"the parse worker process could not start{detail}",
                    hint=f"if KB_PARSE_MEMORY_MB={self.limits.memory_mb} is too low to run Python, raise it",
                )
        return child

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()  # the child exits on end of input
            child.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(child)
        finally:
            if child.stdout:
                child.stdout.close()

    @staticmethod
    def _kill(child: subprocess.Popen) -> None:
        try:
            child.send_signal(signal.SIGKILL)
        except OSError:
            pass
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (child.stdin, child.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

    # -- one file

    def parse(self, file: SourceFile) -> tuple[str, list[Any]]:
        if self._child is None or self._child.poll() is not None:
            self._child = self._start()
        child = self._child
        try:
            _write_frame(child.stdin, pickle.dumps((file, self.limits.max_bytes)))
            reply = self._receive(child, self.limits.timeout)
        except _TimedOut:
            self._kill(child)
            self._child = None
            raise SkipFile(f"parsing took longer than {self.limits.timeout:g} s (KB_PARSE_TIMEOUT); stopped") from None
        except (_Died, OSError):
            try:  # its pipe closed as it died: give the kernel a moment to report how
                code = child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            self._kill(child)
            self._child = None
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise SkipFile(f"the parser process died on this file ({why}; KB_PARSE_MEMORY_MB="
                           f"{self.limits.memory_mb})") from None
        if reply[0] == "ok":
            return reply[1], reply[2]
        raise SkipFile(reply[1])

    def _receive(self, child: subprocess.Popen, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        fd = child.stdout.fileno()
        header = _read_exact(fd, _HEADER.size, deadline)
        (size,) = _HEADER.unpack(header)
        return pickle.loads(_read_exact(fd, size, deadline))


class _TimedOut(Exception):
    pass


class _Died(Exception):
    pass


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise _TimedOut
        poller = select.poll()  # not select.select: it fails on descriptors above 1023 (long-lived processes)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(wait * 1000):
            raise _TimedOut
        data = os.read(fd, min(left, 1 << 20))
        if not data:
            raise _Died
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _write_frame(stream: Any, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


# ---------------------------------------------------------------- the child


def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = int(memory_mb) * 1024 * 1024
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):  # macOS does not enforce RLIMIT_AS
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            _, hard = resource.getrlimit(which)
            resource.setrlimit(which, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
            return
        except (ValueError, OSError):
            continue


def _child_main(config_hex: str) -> None:
    memory_mb, extra_loaders = pickle.loads(bytes.fromhex(config_hex))
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    requests = sys.stdin.buffer
    import importlib

    for suffix, target in extra_loaders.items():
        module, _, name = target.partition(":")
        loaders.LOADERS[suffix] = getattr(importlib.import_module(module), name)
    # loaders and split are imported at the top: before the limit, not a cost of the first file
    _limit_memory(memory_mb)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # what parsers print (warnings of damaged files) goes nowhere
    os.dup2(quiet, 2)
    _write_frame(replies, pickle.dumps(("ready",)))
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        file, max_bytes = pickle.loads(requests.read(size))
        try:
            title, chunks = parse_file(file, max_bytes, memory_mb)
            reply = pickle.dumps(("ok", title, chunks))
        except SkipFile as exc:
            reply = pickle.dumps(("skip", str(exc)))
        except MemoryError:
            reply = pickle.dumps(("skip", _memory_reason(memory_mb)))
        except Exception as exc:  # a bug on one odd file: reported, the child goes on
            reply = pickle.dumps(("skip", f"could not be parsed ({type(exc).__name__})"))
        _write_frame(replies, reply)


if __name__ == "__main__":
    _child_main(sys.argv[1])
