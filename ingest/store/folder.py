"""The index folder (``KB_INDEX_DIR``): whether it can hold an index, and its single-writer lock.

Every writer (``kb ingest``) holds ``writer_lock``; readers never take it, they only probe it
(``ingest_running``) to say "still building" instead of "empty".
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ingest.errors import IndexBusyError, UsageError

LOCK_FILE = "ingest.lock"
LOCK_WAIT = 1.0  # seconds a writer waits for the lock: covers a reader's instant probe (ingest_running)


def check_index_dir(index_dir: Path, *, create: bool) -> Path:
    """``index_dir`` as an absolute path, or one ``UsageError`` naming it when it cannot hold an index:
    it is a file, a parent is a file (``/dev/null/x``), or (``create``) it cannot be created or
    written to. Without ``create`` a folder that does not exist yet is fine (the caller reports that)."""
    path = Path(os.path.abspath(Path(index_dir).expanduser()))
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == path:
            raise UsageError(f"KB_INDEX_DIR {path} is not a folder",
                             hint="point KB_INDEX_DIR at a folder, or move what is there away")
        raise UsageError(f"KB_INDEX_DIR {path} cannot be created: {probe} is not a folder",
                         hint="point KB_INDEX_DIR at a folder")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create KB_INDEX_DIR {path}: {exc.strerror or exc}",
                         hint="point KB_INDEX_DIR at a writable folder") from None
    try:  # a real write: os.access says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=path, prefix=".kb-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"KB_INDEX_DIR {path} is not writable ({exc.strerror or exc})",
                         hint="point KB_INDEX_DIR at a writable folder") from None
    return path


def ingest_running(index_dir: Path) -> bool:
    """True while a ``kb ingest`` holds the writer lock of ``index_dir``.

    Probed with a non-blocking shared ``flock`` on the lock file (the lock ``filelock`` takes is an
    exclusive ``flock``), held for an instant and never created: a writer starting at that very
    instant waits (``LOCK_WAIT``) instead of failing.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no probe, no message
        return False
    try:
        fd = os.open(Path(index_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we got
    return False


@contextmanager
def writer_lock(index_dir: Path):
    """Hold the index's single-writer lock, or fail at once with ``IndexBusyError``.

    An OS file lock (``flock``): released by the kernel when the holder exits, even by ``kill -9``.
    An index folder that cannot be created or written is one ``UsageError`` naming its path.
    """
    from filelock import FileLock, Timeout

    path = check_index_dir(index_dir, create=True)
    lock = FileLock(str(path / LOCK_FILE))
    try:
        lock.acquire(timeout=LOCK_WAIT)
    except Timeout:
        raise IndexBusyError(
            f"another 'kb ingest' is writing to the index at {index_dir}", hint="wait for it to finish and run again"
        ) from None
    except OSError as exc:  # a read-only file system, a folder we may not write to
        raise UsageError(f"KB_INDEX_DIR {path} is not writable ({exc.strerror or exc})",
                         hint="point KB_INDEX_DIR at a writable folder") from None
    try:
        yield
    finally:
        lock.release()
