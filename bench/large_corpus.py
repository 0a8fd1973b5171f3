"""A large, real documentation corpus for retrieval benchmarks, built offline from Debian packages.

    python bench/large_corpus.py                 # corpus only: .bench/large/corpus/ (~1,600 HTML pages)
    python bench/large_corpus.py --index         # and its index: .bench/large/index (KB_INDEX_DIR wins)
    python bench/large_corpus.py --stats         # pages and characters per part, no index
    python bench/large_corpus.py --dev --index   # the dev slice: .bench/large/corpus-dev/, .bench/large/index-dev

The corpus is the PostgreSQL 15 manual (Debian ``postgresql-doc-15``, the whole ``html/`` folder but
its back-of-book index) and the Python 3.11 documentation (``python3.11-doc``: tutorial, library,
language reference, HOWTOs, FAQ, "using", extending/embedding, the C API and the glossary; the
generated indexes, "what's new" and the deprecated distutils guides are left out). The packages are
fetched with ``apt-get download`` (no root, nothing installed) into ``.bench/large/debs/`` and unpacked
with ``dpkg-deb -x``; when apt is not available, an installed copy under ``/usr/share/doc`` is used.
Pages land under ``.bench/large/corpus/postgresql/`` and ``.bench/large/corpus/python/`` with their
package-relative paths, so gold sources read ``postgresql/sql-createtable.html`` and
``python/library/os.html``. The package versions are written to ``.bench/large/manifest.json``.

``--dev`` works on the dev slice instead: the pages listed in ``bench/large_dev_pages.txt`` (every page the gold
set named when it was made plus 250 pseudo-random others) and any page the gold file names since: ~360
pages and ~11,000 chunks (the gold pages include the manuals' longest), copied into
``.bench/large/corpus-dev/`` with the same relative paths, so the same gold file runs on both. It exists
because embedding the full corpus (~25,000 chunks) takes ~30 minutes on 2 idle cores (12-16 chunks/s) and over an hour on a
busy machine. The slice keeps every gold page but only a random share of the pages that compete with
them, so its scores are higher than the full corpus's: compare variants on one size, never across sizes.

``--index`` runs ``kb ingest`` on the corpus (incremental: a re-run on an unchanged corpus only checks it)
with whatever ``KB_*`` settings are in the environment, and prints its wall time and chunk count.
The gold questions for this corpus are ``eval/large-gold.jsonl``; ``bench/retrieval_bench.py`` runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LARGE = ROOT / ".bench" / "large"
CORPUS = LARGE / "corpus"
DEFAULT_INDEX = LARGE / "index"
DEV_CORPUS = LARGE / "corpus-dev"
DEV_INDEX = LARGE / "index-dev"
GOLD = ROOT / "eval" / "large-gold.jsonl"
DEV_PAGES = Path(__file__).resolve().parent / "large_dev_pages.txt"

# part name in the corpus -> (Debian package, folder of its HTML inside the package, what to keep)
PARTS = {
    "postgresql": ("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html"),
    "python": ("python3.11-doc", "usr/share/doc/python3.11/html"),
}
PYTHON_FOLDERS = ("tutorial", "library", "reference", "howto", "faq", "using", "extending", "c-api", "installing")
PYTHON_PAGES = ("glossary.html",)
POSTGRES_SKIP = ("bookindex.html",)


def wanted(part: str, relative: Path) -> bool:
    """Which HTML pages of a package belong to the corpus."""
    if relative.suffix != ".html":
        return False
    if part == "postgresql":
        return relative.name not in POSTGRES_SKIP
    if len(relative.parts) == 1:
        return relative.name in PYTHON_PAGES
    return relative.parts[0] in PYTHON_FOLDERS


def fetch(packages: list[str], into: Path) -> dict[str, Path]:
    """``apt-get download`` each package into ``into`` (cached), unpacked: package -> unpack folder."""
    into.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for package in packages:
        debs = sorted(into.glob(f"{package}_*.deb"))
        if not debs:
            if shutil.which("apt-get") is None:
                raise SystemExit(f"error: apt-get is not available to download {package}")
            result = subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)
            debs = sorted(into.glob(f"{package}_*.deb"))
            if result.returncode or not debs:
                raise SystemExit(f"error: apt-get download {package} failed (try 'apt-get update'): "
                                 f"{result.stderr.strip()[-300:]}")
        unpacked = into / debs[-1].stem
        if not unpacked.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=into))
            subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], check=True)
            tmp.rename(unpacked)
        out[package] = unpacked
    return out


def build_corpus(*, force: bool = False) -> dict[str, object]:
    """Copy the selected pages into CORPUS (only what changed); returns the manifest."""
    manifest_path = LARGE / "manifest.json"
    if CORPUS.is_dir() and manifest_path.is_file() and not force:
        return json.loads(manifest_path.read_text())
    packages = [package for package, _ in PARTS.values()]
    try:
        unpacked = fetch(packages, LARGE / "debs")
    except SystemExit:
        if not all(Path("/", folder).is_dir() for _, folder in PARTS.values()):
            raise
        unpacked = {package: Path("/") for package in packages}  # the installed documentation
    manifest: dict[str, object] = {"parts": {}}
    for part, (package, folder) in PARTS.items():
        source = unpacked[package] / folder
        if not source.is_dir():
            raise SystemExit(f"error: {package} has no {folder}")
        target = CORPUS / part
        keep: set[Path] = set()
        for path in sorted(source.rglob("*.html")):
            relative = path.relative_to(source)
            if not wanted(part, relative) or not path.is_file():
                continue
            keep.add(relative)
            dest = target / relative
            if not dest.is_file() or dest.read_bytes() != path.read_bytes():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
        for old in list(target.rglob("*.html")) if target.is_dir() else []:  # pages a newer package dropped
            if old.relative_to(target) not in keep:
                old.unlink()
        version = next((d.name for d in (LARGE / "debs").glob(f"{package}_*") if d.is_dir()), "installed")
        manifest["parts"][part] = {"package": package, "version": version, "pages": len(keep)}  # type: ignore[index]
    LARGE.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_dev() -> int:
    """Mirror the dev slice of CORPUS into DEV_CORPUS (only what changed); returns its page count."""
    listed = {line.strip() for line in DEV_PAGES.read_text().splitlines() if line.strip() and not line.startswith("#")}
    gold = {source for line in GOLD.read_text().splitlines() if line.strip() and not line.lstrip().startswith("//")
            for source in json.loads(line).get("sources", [])}
    keep = {page for page in listed | gold if (CORPUS / page).is_file()}
    for page in sorted(keep):
        source, dest = CORPUS / page, DEV_CORPUS / page
        if not dest.is_file() or dest.read_bytes() != source.read_bytes():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    for old in list(DEV_CORPUS.rglob("*.html")):
        if old.relative_to(DEV_CORPUS).as_posix() not in keep:
            old.unlink()
    return len(keep)


def stats(corpus: Path = CORPUS) -> None:
    """Pages, visible characters and chunks per part, as kb's loader and splitter see them (no embedding)."""
    sys.path.insert(0, str(ROOT))
    from ingest.documents import SourceFile
    from ingest.formats.web import load_html
    from ingest.split import split_document

    for part in PARTS:
        pages = chars = chunks = 0
        for path in sorted((corpus / part).rglob("*.html")):
            source = path.relative_to(corpus).as_posix()
            document = load_html(SourceFile(corpus, path, source), 50 * 1024 * 1024)
            pages += 1
            chars += sum(len(s.text) for s in document.sections)
            chunks += len(split_document(document))
        print(f"{part:12} {pages:6} pages {chars / 1e6:7.1f} M characters {chunks:7} chunks")


def kb_ingest(corpus: Path, index_dir: Path, *, quiet: bool = False) -> float:
    """``kb ingest`` in a child process, as a user runs it: its wall time. ``quiet``: its output is
    kept, and only the end of its error shown if it fails (``SystemExit``)."""
    kb = ROOT / ".venv" / "bin" / "kb"
    env = {**os.environ, "KB_INDEX_DIR": str(index_dir), "KB_KNOWLEDGE_DIR": str(corpus)}
    start = time.perf_counter()
    result = subprocess.run([str(kb) if kb.exists() else "kb", "ingest", str(corpus)], env=env,
                            capture_output=quiet, text=True)
    if result.returncode:
        raise SystemExit(f"kb ingest {corpus} failed" + (f": {result.stderr.strip()[-500:]}" if quiet else ""))
    return time.perf_counter() - start


def build_index(index_dir: Path, corpus: Path = CORPUS) -> dict[str, float | int | None]:
    """``kb ingest`` the corpus into ``index_dir``; its wall time and the chunk count."""
    seconds = kb_ingest(corpus, index_dir)
    return {"ingest_seconds": round(seconds, 1), "chunks": count_chunks(index_dir)}


def count_chunks(index_dir: Path) -> int | None:
    sys.path.insert(0, str(ROOT))
    os.environ["KB_INDEX_DIR"] = str(index_dir)
    from agent.rag.search import build_store
    from agent.settings import load_settings

    try:
        return int(build_store(load_settings(), command="eval").count())
    except Exception:  # noqa: BLE001 (only a figure for the report)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", action="store_true", help="also ingest it (KB_INDEX_DIR, default .bench/large/index)")
    parser.add_argument("--stats", action="store_true", help="pages, characters and chunks per part (no index)")
    parser.add_argument("--force", action="store_true", help="re-copy the pages even if the corpus exists")
    parser.add_argument("--dev", action="store_true", help="the dev slice (bench/large_dev_pages.txt + gold pages) instead")
    args = parser.parse_args(argv)
    manifest = build_corpus(force=args.force)
    print(f"corpus: {CORPUS} " + ", ".join(f"{k} {v['pages']} pages ({v['version']})" for k, v in manifest["parts"].items()))
    corpus, index_dir = CORPUS, DEFAULT_INDEX
    if args.dev:
        corpus, index_dir = DEV_CORPUS, DEV_INDEX
        print(f"dev slice: {DEV_CORPUS} {build_dev()} pages")
    if args.stats:
        stats(corpus)
    if args.index:
        index_dir = Path(os.environ.get("KB_INDEX_DIR") or index_dir)
        print(json.dumps({"index": str(index_dir), **build_index(index_dir, corpus)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
