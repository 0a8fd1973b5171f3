"""Unity Catalog volumes as a source: ``kb ingest /Volumes/<catalog>/<schema>/<volume>/<path>`` (or
``dbfs:/Volumes/...``) through the Files API of the databricks-sdk (``WorkspaceClient.files``:
``list_directory_contents``, ``get_metadata``, ``download``). The caller passes the client in.

Where ``/Volumes`` is mounted (a Databricks cluster or App), the path is a local folder and is read as
one. Elsewhere the volume is listed, and each supported file is downloaded, streamed to disk in 1 MiB
blocks, into a mirror under ``KB_INDEX_DIR/volumes/`` whose files carry the remote size and modification
time. The plan then treats them exactly like local files (size + mtime, then content hash; the same
loaders, limits and parse worker), with the volume path as the root: ``root`` is
``/Volumes/c/s/v/docs`` and ``source`` the path under it, the same ids as when the volume is mounted.

A file is downloaded only when its listed size or modification time differ from the mirror's copy
(``checksum``: always). Files over the size cap or of an unsupported type are reported and never
downloaded; hidden and ignored names are skipped as in local folders; a name that could leave the
folder (``..``, ``/``, NUL) or a listing entry outside the folder asked for is reported, not followed.
A download that sends more bytes than the cap, or than the listing said, is stopped and reported.
Files gone from the volume are removed from the mirror (and their chunks from the index by the plan).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingest.documents import SourceFile, Skipped
from ingest.errors import RemoteError, UsageError
from ingest.loaders import Discovery, Scope, ignored, loader_for, report_name
from ingest.textio import size_cap_reason

MIRROR_DIR = "volumes"
BLOCK = 1 << 20
MAX_ENTRIES = 1_000_000  # listed entries per run: a bound on a hostile or runaway listing
MAX_DEPTH = 64


def volume_path(given: Any) -> str | None:
    """``/Volumes/c/s/v/...`` for a volume path given as ``/Volumes/...`` or ``dbfs:/Volumes/...`` that is not
    mounted here; ``None`` for anything else (a local path)."""
    text = str(given)
    if text.startswith("dbfs:"):
        text = text[len("dbfs:"):]
        if not text.startswith("/"):
            text = "/" + text
    elif not text.startswith("/Volumes/") or os.path.exists(text):
        return None
    if not text.startswith("/Volumes/"):
        return None
    clean = PurePosixPath(text)
    if ".." in clean.parts or len(clean.parts) < 5:  # "/", "Volumes", catalog, schema, volume
        raise UsageError(f"{given} is not a volume path /Volumes/<catalog>/<schema>/<volume>[/<path>]")
    return str(clean)


@dataclass
class _Remote:
    path: str  # /Volumes/... of the file
    source: str  # relative to the root
    size: int
    mtime_ns: int


class VolumeSource:
    """Lists volume paths and brings their files into the mirror (or, for a dry run, a temporary folder)."""

    def __init__(self, client: Any, index_dir: Path, *, max_bytes: int, checksum: bool = False,
                 dry_run: bool = False) -> None:
        self.client = client
        self.mirror = Path(index_dir) / MIRROR_DIR
        self.max_bytes = max_bytes
        self.checksum = checksum
        self.dry_run = dry_run
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.downloaded = 0  # files fetched this run
        self.bytes = 0

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def discover(self, paths: list[str], known_roots: list[Path]) -> Discovery:
        found = Discovery()
        seen: set[tuple[Path, str]] = set()
        for given in paths:
            path = PurePosixPath(given)
            root = next((r for r in sorted(known_roots, key=lambda r: len(r.parts))
                         if str(r).startswith("/Volumes/") and (Path(path) == r or Path(path).is_relative_to(r))), None)
            kind, size, mtime_ns = self._kind(str(path))
            if kind == "dir":
                root = root or Path(str(path))
                prefix = PurePosixPath(str(path)).relative_to(str(root)).as_posix()
                scope = Scope(root, "" if prefix == "." else prefix)
                remotes = self._walk(str(path), root, found.skipped)
            else:
                root = root or Path(str(path.parent))
                scope = Scope(root, PurePosixPath(str(path)).relative_to(str(root)).as_posix(), is_file=True)
                remotes = [_Remote(str(path), scope.prefix, size, mtime_ns)]
            found.scopes.append(scope)
            listed: set[str] = set()
            for remote in remotes:
                if (root, remote.source) in seen:
                    continue
                seen.add((root, remote.source))
                listed.add(remote.source)
                file = self._fetch(root, remote, found.skipped)
                if file is not None:
                    found.files.append(file)
            if not self.dry_run:
                self._prune(root, scope, listed)
        found.files.sort(key=lambda f: (str(f.root), f.source))
        return found

    # -- listing

    def _kind(self, path: str) -> tuple[str, int, int]:
        from databricks.sdk.errors import NotFound

        try:
            self.client.files.get_directory_metadata(path)
            return "dir", 0, 0
        except NotFound:
            pass
        except Exception as exc:
            raise _remote_error(path, exc) from None
        try:
            meta = self.client.files.get_metadata(path)
        except NotFound:
            raise UsageError(f"no such file or folder: {path}") from None
        except Exception as exc:
            raise _remote_error(path, exc) from None
        return "file", int(meta.content_length or 0), _http_date_ns(meta.last_modified)

    def _walk(self, start: str, root: Path, skipped: list[Skipped]) -> list[_Remote]:
        out: list[_Remote] = []
        stack = [(start, 0)]
        entries = 0
        while stack:
            folder, depth = stack.pop()
            try:
                listing = list(self.client.files.list_directory_contents(folder))
            except Exception as exc:
                skipped.append(Skipped(_relative(folder, root) + "/", f"cannot list folder: {_reason(exc)}"))
                continue
            for entry in sorted(listing, key=lambda e: str(e.name or "")):
                entries += 1
                if entries > MAX_ENTRIES:
                    skipped.append(Skipped(_relative(folder, root) + "/",
                                           f"more than {MAX_ENTRIES} entries listed: the rest is not indexed"))
                    return out
                name = str(entry.name or "")
                where = f"{folder.rstrip('/')}/{name}"
                source = _relative(where, root)
                if not name or name in (".", "..") or "/" in name or "\x00" in name or "\\" in name:
                    skipped.append(Skipped(report_name(source), "unsafe file name: not indexed"))
                    continue
                if entry.path and str(entry.path).rstrip("/") != where:
                    skipped.append(Skipped(report_name(source), "listed outside its folder: not followed"))
                    continue
                if ignored(name):
                    continue
                if entry.is_directory:
                    if depth + 1 > MAX_DEPTH:
                        skipped.append(Skipped(report_name(source) + "/", f"nested deeper than {MAX_DEPTH} folders"))
                    else:
                        stack.append((where, depth + 1))
                    continue
                out.append(_Remote(where, source, int(entry.file_size or 0), int(entry.last_modified or 0) * 1_000_000))
        return out

    # -- downloading

    def _local(self, root: Path, source: str) -> Path:
        return self.mirror / str(root).lstrip("/") / source

    def _fetch(self, root: Path, remote: _Remote, skipped: list[Skipped]) -> SourceFile | None:
        if loader_for(Path(remote.source)) is None:
            skipped.append(Skipped(remote.source, f"unsupported file type '{PurePosixPath(remote.source).suffix}'"))
            return None
        if remote.size > self.max_bytes:
            skipped.append(Skipped(remote.source, size_cap_reason(remote.size, self.max_bytes)))
            return None
        local = self._local(root, remote.source)
        if not self.checksum and _same(local, remote):
            return SourceFile(root=root, path=local, source=remote.source)
        if self.dry_run:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="kb-volume-")
            local = Path(self._scratch.name) / str(root).lstrip("/") / remote.source
        try:
            self._download(remote, local)
        except _TooBig as exc:
            skipped.append(Skipped(remote.source, str(exc)))
            return None
        except Exception as exc:
            skipped.append(Skipped(remote.source, f"cannot download: {_reason(exc)}"))
            return None
        return SourceFile(root=root, path=local, source=remote.source)

    def _download(self, remote: _Remote, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        limit = min(self.max_bytes, remote.size) if remote.size else self.max_bytes
        fd, temp = tempfile.mkstemp(dir=local.parent, prefix=".kb-download-")
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                response = self.client.files.download(remote.path)
                stream = response.contents
                try:
                    while True:
                        block = stream.read(BLOCK)
                        if not block:
                            break
                        written += len(block)
                        if written > limit:
                            raise _TooBig(size_cap_reason(written, self.max_bytes) if written > self.max_bytes
                                          else "changed while downloading (more bytes than listed): try again")
                        out.write(block)
                finally:
                    stream.close()
            if remote.size and written != remote.size:
                raise _TooBig("changed while downloading (fewer bytes than listed): try again")
            os.utime(temp, ns=(remote.mtime_ns, remote.mtime_ns))
            os.replace(temp, local)
            self.downloaded += 1
            self.bytes += written
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def _prune(self, root: Path, scope: Scope, listed: set[str]) -> None:
        """Mirror files of the scope no longer on the volume go (so the mirror never outgrows the volume)."""
        base = self.mirror / str(root).lstrip("/")
        start = base / scope.prefix if scope.prefix and not scope.is_file else base
        if scope.is_file or not start.is_dir():
            return
        for dirpath, _, filenames in os.walk(start):
            for name in filenames:
                path = Path(dirpath) / name
                source = path.relative_to(base).as_posix()
                if source not in listed:
                    try:
                        path.unlink()
                    except OSError:
                        pass


class _TooBig(Exception):
    pass


def _same(local: Path, remote: _Remote) -> bool:
    try:
        stat = local.stat()
    except OSError:
        return False
    return stat.st_size == remote.size and stat.st_mtime_ns == remote.mtime_ns


def _relative(path: str, root: Path) -> str:
    try:
        return PurePosixPath(path).relative_to(str(root)).as_posix()
    except ValueError:
        return PurePosixPath(path).name


def _http_date_ns(value: Any) -> int:
    if not value:
        return 0
    try:
        return int(parsedate_to_datetime(str(value)).timestamp()) * 1_000_000_000
    except (TypeError, ValueError, IndexError):
        return 0


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return text or type(exc).__name__


def _remote_error(path: str, exc: BaseException) -> Exception:
    return RemoteError(f"cannot read {path} through the Files API ({_reason(exc)})",
                       hint="check DATABRICKS_HOST, your access to the volume (READ VOLUME) and the network")


def clear_mirror(index_dir: Path) -> None:
    shutil.rmtree(Path(index_dir) / MIRROR_DIR, ignore_errors=True)
