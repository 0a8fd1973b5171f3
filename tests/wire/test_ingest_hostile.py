"""Hostile corpora and a hostile KB_INDEX_DIR (issue 18: items 5, 8, 9, 10, 13).

Every file here is made by the test: a DOCX whose image member inflates to hundreds of MB, parsers
that loop or allocate for ever (planted through ``ParseLimits.extra_loaders``), a file name that is
not UTF-8, a folder deeper than PATH_MAX, an index folder that is a file.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from ingest import loaders
from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.store.folder import writer_lock
from ingest.sync.isolation import ParseLimits, ParseWorker
from ingest.sync.job import ingest
from ingest.sync.records import Records
from tests.conftest import KbRunner
from tests.wire.test_sync import HashEmbeddings

REPO = Path(__file__).resolve().parents[2]


def good_docs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pto.md").write_text("# PTO\n\nEveryone gets 25 vacation days per calendar year.\n", encoding="utf-8")
    (root / "deploy.md").write_text("# Deploys\n\nRoll back with the deploy tool's revert command.\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------- planted parsers (run in the worker)


def spin_forever(file: SourceFile, max_bytes: int) -> LoadedDocument:
    while True:  # a parser stuck in a loop
        pass


def allocate_forever(file: SourceFile, max_bytes: int) -> LoadedDocument:
    blocks = []
    while True:  # a parser whose memory grows without bound
        blocks.append(bytearray(64 << 20))


def crash(file: SourceFile, max_bytes: int) -> LoadedDocument:
    os.kill(os.getpid(), 9)  # a crash in C code, or the kernel's OOM killer
    raise AssertionError("unreachable")


def fine(file: SourceFile, max_bytes: int) -> LoadedDocument:
    return LoadedDocument(file.source, "Fine", "text", [Section("a well-behaved planted parser")])


PLANTED = {".spin": spin_forever, ".hog": allocate_forever, ".crash": crash, ".fine": fine}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The planted loaders, known to discovery here and registered in the worker process."""
    for suffix, function in PLANTED.items():
        monkeypatch.setitem(loaders.LOADERS, suffix, function)
    return {suffix: f"tests.wire.test_ingest_hostile:{function.__name__}" for suffix, function in PLANTED.items()}


# ---------------------------------------------------------------- item 5: DOCX bombs


def _base_docx() -> dict[str, bytes]:
    import docx

    document = docx.Document()
    document.add_heading("Travel policy", level=1)
    document.add_paragraph("Book trains for trips under four hours.")
    buffer = io.BytesIO()
    document.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_docx_with_image(path: Path, image_bytes: int) -> None:
    """A real DOCX whose document relationship points at ``word/media/image1.png``: zeros,
    ``image_bytes`` of them, deflated (1 MB on disk per GB)."""
    members = _base_docx()
    rels = members["word/_rels/document.xml.rels"].decode()
    rels = rels.replace("</Relationships>", '<Relationship Id="rIdBomb" Type="http://schemas.openxmlformats.org/'
                        'officeDocument/2006/relationships/image" Target="media/image1.png"/></Relationships>')
    members["word/_rels/document.xml.rels"] = rels.encode()
    types = members["[Content_Types].xml"].decode()
    members["[Content_Types].xml"] = types.replace(
        "<Default ", '<Default Extension="png" ContentType="image/png"/><Default ', 1).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        with archive.open("word/media/image1.png", "w", force_zip64=True) as member:
            block = bytes(min(16 << 20, image_bytes) or 1)
            for _ in range(image_bytes // len(block)):
                member.write(block)


def _load_in_child(path: Path, max_bytes: int) -> dict:
    """Load ``path`` in a fresh interpreter: the skip reason, the time and the peak RSS (MB)."""
    code = textwrap.dedent(f"""
        import json, resource, sys, time
        from pathlib import Path
        from ingest.documents import SkipFile, SourceFile
        from ingest.loaders import load
        import docx  # its import is not the file's cost
        path = Path({str(path)!r})
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.monotonic()
        try:
            load(SourceFile(path.parent, path, path.name), max_bytes={max_bytes})
            reason = None
        except SkipFile as exc:
            reason = str(exc)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"reason": reason, "seconds": time.monotonic() - start,
                          "peak_mb": peak / 1024, "growth_mb": (peak - base) / 1024}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_docx_whose_image_inflates_to_512_mb_is_refused_quickly_with_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    write_docx_with_image(path, 512 << 20)
    assert path.stat().st_size < 3 << 20  # ~0.5 MB on disk
    result = _load_in_child(path, max_bytes=50 << 20)  # the default KB_MAX_FILE_MB
    assert result["reason"] is not None and "word/media/image1.png" in result["reason"]
    assert "expands beyond the size cap" in result["reason"] or "zip bomb" in result["reason"]
    assert result["growth_mb"] < 100, result  # before the fix python-docx inflated the whole image: >512 MB
    assert result["seconds"] < 30  # generous: refused from the declared sizes, nothing inflated


def test_docx_pictures_within_bounds_are_indexed_but_never_inflated(tmp_path: Path) -> None:
    from ingest.formats import office

    path = tmp_path / "photo.docx"
    write_docx_with_image(path, 0)
    with zipfile.ZipFile(path, "a") as archive:  # an incompressible 4 MB picture: no bomb, a real photo
        archive.writestr("word/media/image2.png", os.urandom(4 << 20))
    document = loaders.load(SourceFile(tmp_path, path, path.name), max_bytes=50 << 20)
    assert "Book trains for trips under four hours." in document.sections[0].text
    with zipfile.ZipFile(path) as archive:
        package = office._text_package(archive, office.check_archive(archive, 50 << 20, "DOCX"), 50 << 20)
    with zipfile.ZipFile(io.BytesIO(package)) as copy:
        assert copy.read("word/media/image2.png") == b"" and copy.read("word/media/image1.png") == b""
        assert b"Book trains" in copy.read("word/document.xml")


def _patch_sizes(data: bytes, name: str, size: int, *, local: bool) -> bytes:
    """Rewrite the uncompressed size recorded for member ``name`` (central directory, and the local header)."""
    raw = bytearray(data)
    encoded = name.encode()
    at = raw.find(b"PK\x01\x02" + b"")
    while at != -1:
        name_len = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + name_len] == encoded:
            raw[at + 24 : at + 28] = size.to_bytes(4, "little")
            if local:
                offset = int.from_bytes(raw[at + 42 : at + 46], "little")
                raw[offset + 22 : offset + 26] = size.to_bytes(4, "little")
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def test_docx_headers_that_lie_are_caught(tmp_path: Path) -> None:
    members = _base_docx()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("word/media/image1.png", b"\x00" * 1000)
    # declared 3 GiB, 1 KB inside: refused from the header, nothing read
    claims_more = tmp_path / "claims-more.docx"
    claims_more.write_bytes(_patch_sizes(buffer.getvalue(), "word/media/image1.png", 3 << 30, local=True))
    with pytest.raises(SkipFile, match="expands beyond the size cap"):
        loaders.load(SourceFile(tmp_path, claims_more, claims_more.name), max_bytes=50 << 20)
    # declared 100 bytes for the document body, more inside: the read stops at 100 and the CRC fails
    claims_less = tmp_path / "claims-less.docx"
    claims_less.write_bytes(_patch_sizes(buffer.getvalue(), "word/document.xml", 100, local=True))
    with pytest.raises(SkipFile, match="malformed DOCX|not a valid DOCX"):
        loaders.load(SourceFile(tmp_path, claims_less, claims_less.name), max_bytes=50 << 20)


# ---------------------------------------------------------------- item 5: per-file parse limits


def test_a_parser_that_loops_or_eats_memory_is_stopped_and_the_rest_is_indexed(
    tmp_path: Path, planted: dict[str, str]
) -> None:
    docs = good_docs(tmp_path / "docs")
    (docs / "stuck.spin").write_text("anything", encoding="utf-8")
    (docs / "greedy.hog").write_text("anything", encoding="utf-8")
    (docs / "crashes.crash").write_text("anything", encoding="utf-8")
    (docs / "ok.fine").write_text("anything", encoding="utf-8")
    limits = ParseLimits(timeout=3, memory_mb=512, extra_loaders=planted)
    started = time.monotonic()
    summary = ingest([docs], tmp_path / "index", HashEmbeddings(), parse_limits=limits)
    assert time.monotonic() - started < 120  # liveness: the loop was killed, not waited out
    reasons = {s.source: s.reason for s in summary.skipped}
    assert reasons["stuck.spin"] == "parsing took longer than 3 s (KB_PARSE_TIMEOUT); stopped"
    assert reasons["greedy.hog"] == "parsing needs more memory than allowed (KB_PARSE_MEMORY_MB=512)"
    assert reasons["crashes.crash"].startswith("the parser process died on this file (killed by signal 9")
    assert set(reasons) == {"stuck.spin", "greedy.hog", "crashes.crash"}
    assert summary.added == 3 and summary.chunks_total >= 3  # pto.md, deploy.md and ok.fine
    # the verdicts are remembered like any skip: the next run does not parse them again
    again = ingest([docs], tmp_path / "index", HashEmbeddings(), parse_limits=limits)
    assert {s.source: s.reason for s in again.skipped} == reasons and again.unchanged == 3


def test_the_worker_is_reused_and_restarted_after_a_kill(tmp_path: Path, planted: dict[str, str]) -> None:
    docs = good_docs(tmp_path / "docs")
    (docs / "stuck.spin").write_text("x", encoding="utf-8")
    files = [SourceFile(docs, docs / name, name) for name in ("pto.md", "deploy.md", "stuck.spin", "pto.md")]
    with ParseWorker(ParseLimits(timeout=2, memory_mb=512, extra_loaders=planted)) as worker:
        title, chunks = worker.parse(files[0])
        assert title == "PTO" and "25 vacation days" in chunks[0].text
        worker.parse(files[1])
        assert worker.started == 1  # one process for many files
        with pytest.raises(SkipFile, match="KB_PARSE_TIMEOUT"):
            worker.parse(files[2])
        assert worker.parse(files[3])[0] == "PTO"
        assert worker.started == 2  # a fresh one after the kill


def test_a_no_change_rerun_starts_no_parse_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = good_docs(tmp_path / "docs")
    for path in docs.iterdir():
        os.utime(path, (1_600_000_000, 1_600_000_000))  # old enough that size + mtime are trusted
    limits = ParseLimits(timeout=30, memory_mb=1024)
    first = ingest([docs], tmp_path / "index", HashEmbeddings(), parse_limits=limits)
    assert first.added == 2
    starts = []
    real_start = ParseWorker._start
    monkeypatch.setattr(ParseWorker, "_start", lambda self: starts.append(1) or real_start(self))
    again = ingest([docs], tmp_path / "index", HashEmbeddings(), parse_limits=limits)
    assert again.unchanged == 2 and starts == []


# ---------------------------------------------------------------- items 8, 9: names and paths


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_indexed(tmp_path: Path) -> None:
    docs = good_docs(tmp_path / "docs")
    fd = os.open(os.fsencode(docs) + b"/bad\xff.md", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"# Bad name\n\nThis text is fine, its name is not.\n")
    os.close(fd)
    os.mkdir(os.fsencode(docs) + b"/dir\xfe")
    summary = ingest([docs], tmp_path / "index", HashEmbeddings())
    assert summary.added == 2
    reasons = {s.source: s.reason for s in summary.skipped}
    assert reasons == {"bad\\xff.md": "file name is not valid UTF-8: not indexed (rename it)",
                       "dir\\xfe": "folder name is not valid UTF-8: not indexed (rename it)"}
    json.dumps(summary.to_dict(), ensure_ascii=False).encode("utf-8")  # printable and storable


def test_a_folder_deeper_than_the_os_allows_is_reported_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = good_docs(tmp_path / "docs")
    (docs / "zz-after").mkdir()
    (docs / "zz-after" / "later.md").write_text("# Later\n\nWalked after the deep folder.\n", encoding="utf-8")
    monkeypatch.chdir(docs)
    os.mkdir("deep")
    os.chdir("deep")
    for _ in range(20):  # 20 x 250 characters: past PATH_MAX (4096)
        os.mkdir("d" * 250)
        os.chdir("d" * 250)
    with open("lost.md", "w", encoding="utf-8") as handle:
        handle.write("# Too deep\n")
    monkeypatch.chdir(tmp_path)
    summary = ingest([docs], tmp_path / "index", HashEmbeddings())
    assert summary.added == 3  # pto.md, deploy.md, zz-after/later.md
    [skip] = summary.skipped
    assert skip.source.startswith("deep/ddd") and "..." in skip.source and len(skip.source) < 400
    assert "path too long for the operating system" in skip.reason


# ---------------------------------------------------------------- item 10: KB_INDEX_DIR


@pytest.mark.parametrize("where", ["file", "under-file", "dev-null", "dev-null-child"])
def test_an_unusable_index_dir_is_one_error_line_for_ingest_and_search(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, kb: KbRunner
) -> None:
    docs = good_docs(tmp_path / "docs")
    (env / "a-file").write_text("not a folder", encoding="utf-8")
    index_dir, named = {
        "file": ("a-file", env / "a-file"),  # relative in the setting, absolute in the message
        "under-file": (str(env / "a-file" / "index"), env / "a-file" / "index"),
        "dev-null": ("/dev/null", Path("/dev/null")),
        "dev-null-child": ("/dev/null/x", Path("/dev/null/x")),
    }[where]
    monkeypatch.setenv("KB_INDEX_DIR", index_dir)
    for args in (("ingest", str(docs)), ("ingest", str(docs), "--dry-run"), ("search", "vacation days")):
        result = kb(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: KB_INDEX_DIR {named} "), lines


def test_an_index_dir_that_cannot_be_created_or_written_is_one_error_line(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner
) -> None:
    """Root ignores permission bits, so this uses what even root cannot write: /sys (read-only or
    refusing new entries in containers). Skipped where /sys is writable."""
    docs = good_docs(tmp_path / "docs")
    for target in (Path("/sys/kb-test-index"), Path("/sys/kernel")):
        probe = target if target.exists() else target.parent
        try:
            (probe / ".kb-probe").mkdir()
        except OSError:
            pass
        else:
            (probe / ".kb-probe").rmdir()
            pytest.skip(f"{probe} is writable here")
        monkeypatch.setenv("KB_INDEX_DIR", str(target))
        result = kb("ingest", str(docs))
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], lines
        assert "writable" in lines[0]


# ---------------------------------------------------------------- item 13: chunk cap, --checksum, first ingest


def long_doc(path: Path, sections: int) -> None:
    path.write_text("\n\n".join(f"## Part {i}\n\n" + f"Sentence {i} about rule {i}. " * 40 for i in range(sections)),
                    encoding="utf-8")


def test_a_file_over_the_chunk_cap_keeps_its_first_chunks_and_is_reported(tmp_path: Path) -> None:
    docs = good_docs(tmp_path / "docs")
    long_doc(docs / "huge.md", 12)
    for path in docs.iterdir():
        os.utime(path, (1_600_000_000, 1_600_000_000))
    index_dir = tmp_path / "index"
    summary = ingest([docs], index_dir, HashEmbeddings(), max_chunks=3)
    [cut] = summary.truncated
    assert cut["source"] == "huge.md" and cut["kept"] == 3 and cut["chunks"] >= 12
    assert cut["reason"] == f"{cut['chunks']} chunks, only the first 3 indexed (KB_MAX_CHUNKS_PER_FILE=3)"
    assert summary.to_dict()["truncated"] == [cut]
    with _records(index_dir) as records:
        kept = records.for_root(docs.resolve())["huge.md"]
    assert len(kept.ids) == 3 and kept.chunks_total == cut["chunks"]
    assert summary.chunks_total == 3 + 2  # huge.md's first 3 + one chunk per small file
    # reported again on the next run, like a skip, without parsing
    again = ingest([docs], index_dir, HashEmbeddings(), max_chunks=3)
    assert again.unchanged == 3 and again.truncated == [cut] and again.chunks_embedded == 0
    # a new cap re-splits the file: raised past its size, every chunk is indexed
    raised = ingest([docs], index_dir, HashEmbeddings(), max_chunks=100)
    assert raised.changed == 1 and raised.truncated == [] and raised.chunks_total == cut["chunks"] + 2


class _records:
    def __init__(self, index_dir: Path) -> None:
        self.records = Records(index_dir)

    def __enter__(self) -> Records:
        return self.records

    def __exit__(self, *exc) -> None:
        self.records.close()


def test_checksum_finds_a_change_that_kept_size_and_mtime(tmp_path: Path) -> None:
    docs = good_docs(tmp_path / "docs")
    policy = docs / "pto.md"
    old_stat = policy.stat()
    os.utime(policy, ns=(old_stat.st_atime_ns, 1_600_000_000 * 10**9))
    index_dir = tmp_path / "index"
    ingest([docs], index_dir, HashEmbeddings())
    stat = policy.stat()
    text = policy.read_text(encoding="utf-8")
    policy.write_text(text.replace("25", "30"), encoding="utf-8")  # same size
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime restored
    assert policy.stat().st_size == stat.st_size and policy.stat().st_mtime_ns == stat.st_mtime_ns
    trusting = ingest([docs], index_dir, HashEmbeddings())
    assert trusting.unchanged == 2 and trusting.changed == 0  # the default trusts size + mtime
    hashing = ingest([docs], index_dir, HashEmbeddings(), checksum=True)
    assert hashing.changed == 1 and hashing.chunks_embedded >= 1
    from ingest.store.base import Filter
    from ingest.store.chroma import open_store

    store = open_store(index_dir, HashEmbeddings())
    texts = [t for page in store.scan(filter=Filter(equals={"source": "pto.md"})) for t in page.texts]
    assert any("30 vacation days" in t for t in texts) and not any("25 vacation days" in t for t in texts)


def test_cli_chunk_cap_and_checksum(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kb: KbRunner) -> None:
    docs = good_docs(tmp_path / "docs")
    long_doc(docs / "huge.md", 6)
    monkeypatch.setenv("KB_MAX_CHUNKS_PER_FILE", "2")
    data = json.loads(kb("ingest", str(docs), "--json").stdout)
    assert [(t["source"], t["kept"]) for t in data["truncated"]] == [("huge.md", 2)]
    human = kb("ingest", str(docs), "--checksum")
    assert human.exit_code == 0 and "0 added, 0 changed, 3 unchanged" in human.stdout
    assert "truncated huge.md: " in human.stderr and "KB_MAX_CHUNKS_PER_FILE=2" in human.stderr


def test_a_search_while_the_first_ingest_runs_says_so(env: Path, tmp_path: Path, kb: KbRunner) -> None:
    """The state of a first ``kb ingest`` before its first batch: lock held, collection empty."""
    from ingest.embeddings.local import LOCAL_MODEL_ID
    from ingest.store.chroma import connect, open_target

    local = type("Local", (), {"model_id": LOCAL_MODEL_ID})()  # what kb search will query with
    index_dir = Path(os.environ["KB_INDEX_DIR"])
    with writer_lock(index_dir):
        result = kb("search", "vacation days")  # lock taken, Chroma not created yet
        assert result.exit_code == 3
        assert "'kb ingest' is still building the index at" in result.stderr and "empty" not in result.stderr
        client = connect(index_dir, create=True)
        open_target(client, local, rebuild=False, where=str(index_dir), index_dir=index_dir)  # the empty first collection
        result = kb("search", "vacation days")
        assert result.exit_code == 3, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "'kb ingest' is still building the index at" in lines[0]
        assert "nothing is searchable yet" in lines[0] and "empty" not in lines[0]
    result = kb("search", "vacation days")  # no ingest running: an empty index is called empty
    assert result.exit_code == 3 and "is empty" in result.stderr
