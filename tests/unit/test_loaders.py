"""Loading every supported format, in every common encoding, and refusing hostile input with a reason."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from ingest.loaders import SkipFile, SourceFile, discover, load, loader_for
from ingest.split import split_document
from ingest.textio import decode_text, read_bytes
from tests.corpus import make_pdf


def _file(path: Path) -> SourceFile:
    return SourceFile(root=path.parent, path=path, source=path.name)


def _load(path: Path, **kwargs):
    return load(_file(path), **kwargs)


def _skip_reason(path: Path, **kwargs) -> str:
    with pytest.raises(SkipFile) as caught:
        _load(path, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("Crème brûlée – 5 €".encode(), "Crème brûlée – 5 €"),
        (b"\xef\xbb\xbf" + "Größe".encode(), "Größe"),
        ("Größe ünd Maße".encode("utf-16"), "Größe ünd Maße"),  # with BOM (little endian here)
        (b"\xfe\xff" + "Größe".encode("utf-16-be"), "Größe"),
        ("Größe ünd Maße, no BOM".encode("utf-16-le"), "Größe ünd Maße, no BOM"),
        ("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"), "café crème brûlée"),
        ("\u201csmart quotes\u201d \u2013 5 \u20ac".encode("cp1252"), "“smart quotes” – 5 €"),
        ("UTF-8 with one damaged byte: Größe ".encode() + b"\xff" + " ünd Maße".encode(), None),
    ],
)
def test_common_encodings_decode_to_the_same_text(data: bytes, expected: str | None) -> None:
    text = decode_text(data)
    if expected is None:
        assert "Größe" in text and "Maße" in text and "\ufffd" in text
    else:
        assert text == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"hello\x00world" * 10, "binary data, not text"),
        (b"%PDF-1.4 fake pdf body", "looks like a PDF"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "looks like a PNG image"),
        (b"plain start " + bytes(range(1, 9)) * 40, "control characters"),
        (b"abc \x81\x8d\x90 def", "undecodable text"),
        (b"\xff\xfe\x00\xd8", "undecodable text"),  # UTF-16 BOM, then a lone surrogate
    ],
)
def test_bytes_that_are_not_text_are_refused_with_a_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(SkipFile, match=fragment):
        decode_text(data)


# ---------------------------------------------------------------- formats


def test_markdown_front_matter_gives_the_title_and_is_not_indexed(tmp_path: Path) -> None:
    path = tmp_path / "guide.markdown"
    path.write_text("---\ntitle: Deploy Guide\nowner: platform\n---\n\nRun `make deploy` after review.\n", encoding="utf-8")
    document = _load(path)
    assert document.title == "Deploy Guide"
    assert "owner: platform" not in document.sections[0].text and "make deploy" in document.sections[0].text


def test_rst_sections_follow_the_heading_levels(tmp_path: Path) -> None:
    path = tmp_path / "runbook.rst"
    path.write_text(
        "=======\nRunbook\n=======\n\nIntro.\n\nDeploy\n------\n\nRun shipit.\n\nCanary\n~~~~~~\n\nWatch 5 minutes.\n\n"
        "Rollback\n--------\n\nRun shipit rollback.\n",
        encoding="utf-8",
    )
    chunks = split_document(_load(path))
    sections = [c.metadata["section"] for c in chunks]
    assert sections == ["Runbook", "Runbook > Deploy", "Runbook > Deploy > Canary", "Runbook > Rollback"]
    assert chunks[2].text.startswith("Canary") and "Watch 5 minutes." in chunks[2].text
    assert _load(path).title == "Runbook"


def test_docx_headings_lists_and_tables_become_markdown(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Travel Policy"
    document.add_heading("Travel Policy", level=1)
    document.add_paragraph("Book trains for trips under 600 km.")
    document.add_heading("Hotels", level=2)
    document.add_paragraph("Up to 140 euros per night.", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "City", "Cap"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "Paris", "180"
    path = tmp_path / "travel.docx"
    document.save(path)
    loaded = _load(path)
    assert loaded.title == "Travel Policy"
    chunks = split_document(loaded)
    hotels = next(c for c in chunks if "140 euros" in c.text)
    assert hotels.metadata["section"] == "Travel Policy > Hotels"
    assert "- Up to 140 euros per night." in hotels.text and "| Paris | 180 |" in hotels.text


def test_csv_rows_are_packed_with_the_header_repeated(tmp_path: Path) -> None:
    path = tmp_path / "hosts.csv"
    rows = ["host,owner,purpose"] + [f"web-{i:03d}.acme.example,team-{i % 7},serves shop traffic for region {i}" for i in range(60)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    chunks = split_document(_load(path))
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk.text.startswith("| host | owner | purpose |\n|---|---|---|\n")
        assert len(chunk.text) <= 800
    assert chunks[0].metadata["section"].startswith("rows 2-")
    body_rows = [line for c in chunks for line in c.text.splitlines()[2:]]
    assert len(body_rows) == 60 and len(set(body_rows)) == 60  # every row once, none lost


def test_csv_delimiter_is_sniffed_and_quoted_cells_kept(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text('name;team;note\nAda;core;"lead; on call"\n', encoding="utf-8")
    chunk = split_document(_load(path))[0]
    assert "| Ada | core | lead; on call |" in chunk.text


def test_json_records_are_flattened_to_paths(tmp_path: Path) -> None:
    path = tmp_path / "services.json"
    services = [{"name": f"svc-{i}", "owner": {"team": "payments", "oncall": f"pager-{i}"}, "ports": [80, 443]}
                for i in range(3)]
    path.write_text(json.dumps(services), encoding="utf-8")
    chunks = split_document(_load(path))
    assert len(chunks) == 1 and chunks[0].metadata["section"] == "records 0-2"
    assert "name: svc-1\nowner.team: payments\nowner.oncall: pager-1\nports: 80, 443" in chunks[0].text


def test_json_config_object_and_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"name": "nightly-etl", "cluster": {"node_type": "i3.xlarge", "workers": 4}}), encoding="utf-8")
    loaded = _load(config)
    assert loaded.title == "nightly-etl"
    assert "cluster.node_type: i3.xlarge" in split_document(loaded)[0].text
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"event": "deploy", "service": "shop"}\n\n{"event": "rollback", "service": "shop"}\n', encoding="utf-8")
    chunk = split_document(_load(lines))[0]
    assert chunk.metadata["section"] == "lines 1-3" and "event: rollback" in chunk.text


def test_notebook_cells_are_grouped_under_their_headings(tmp_path: Path) -> None:
    notebook = {
        "nbformat": 4,
        "metadata": {"kernelspec": {"language": "python", "name": "python3"}},
        "cells": [
            {"cell_type": "markdown", "source": ["# Churn analysis\n", "Weekly churn."]},
            {"cell_type": "code", "source": "df = spark.table('churn')\ndf.count()",
             "outputs": [{"output_type": "execute_result", "data": {"text/plain": ["42"]}}]},
            {"cell_type": "markdown", "source": "## Model"},
            {"cell_type": "code", "source": ["model.fit(df)"], "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "empty"}]},
            {"cell_type": "code", "source": "", "outputs": []},
        ],
    }
    path = tmp_path / "churn.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    loaded = _load(path)
    assert loaded.title == "Churn analysis"
    chunks = split_document(loaded)
    assert [c.metadata["section"] for c in chunks] == ["Churn analysis · cells 1-2", "Churn analysis > Model · cells 3-4"]
    assert "```python\ndf = spark.table('churn')" in chunks[0].text and "Output:\n42" in chunks[0].text
    assert "ValueError: empty" in chunks[1].text


def test_databricks_source_notebook_is_split_by_command(tmp_path: Path) -> None:
    path = tmp_path / "load_orders.py"
    path.write_text(
        "# Databricks notebook source\n# MAGIC %md\n# MAGIC # Load orders\n# MAGIC Reads raw orders.\n\n"
        "# COMMAND ----------\n\n# DBTITLE 1,Read the table\ndf = spark.read.table('raw.orders')\n\n"
        "# COMMAND ----------\n\n# MAGIC %sql\n# MAGIC SELECT count(*) FROM raw.orders\n",
        encoding="utf-8",
    )
    loaded = _load(path)
    assert loaded.kind == "notebook" and loaded.title == "Load orders"
    text = split_document(loaded)[0].text
    assert "Read the table\n```python\ndf = spark.read.table('raw.orders')\n```" in text
    assert "```sql\nSELECT count(*) FROM raw.orders\n```" in text and "MAGIC" not in text


def test_python_splits_by_function_and_class(tmp_path: Path) -> None:
    path = tmp_path / "etl.py"
    body = "\n".join(f"        step_{i} = transform(rows, {i})" for i in range(40))
    path.write_text(
        '"""Nightly ETL."""\nimport os\n\n\n# Reads the raw table.\n@retry(3)\ndef extract(table):\n    return spark.table(table)\n\n\n'
        f"class Loader:\n    def load(self, rows):\n{body}\n\n    def commit(self):\n        return True\n",
        encoding="utf-8",
    )
    chunks = split_document(_load(path))
    sections = [c.metadata["section"] for c in chunks]
    assert sections[0] == "" and "import os" in chunks[0].text
    assert sections[1] == "def extract" and chunks[1].text.startswith("# Reads the raw table.\n@retry(3)\ndef extract")
    assert set(sections[2:]) == {"class Loader"} and len(chunks) >= 4  # the big class is split further
    assert all(len(c.text) <= 600 for c in chunks)
    assert any("def commit" in c.text for c in chunks[2:])


def test_sql_yaml_and_other_code_get_labels(tmp_path: Path) -> None:
    sql = tmp_path / "schema.sql"
    sql.write_text("CREATE OR REPLACE TABLE sales.orders (id BIGINT, amount DECIMAL(10,2));\n", encoding="utf-8")
    assert split_document(_load(sql))[0].metadata["section"] == "table sales.orders"
    yaml = tmp_path / "job.yml"
    yaml.write_text("resources:\n  jobs:\n    nightly:\n      name: nightly\n", encoding="utf-8")
    assert split_document(_load(yaml))[0].text.startswith("resources:")
    script = tmp_path / "deploy.ts"
    script.write_text("export async function deploy(env: string) {\n  return run(env);\n}\n", encoding="utf-8")
    assert split_document(_load(script))[0].metadata["section"] == "function deploy"
    for name in ("Dockerfile", "Makefile", "README", "query.sql", "conf.toml", "run.sh", "app.js"):
        assert loader_for(Path(name)) is not None, name
    assert loader_for(Path("photo.png")) is None and loader_for(Path("data.parquet")) is None


# ---------------------------------------------------------------- hostile input


def test_empty_whitespace_binary_and_undecodable_files(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\t\n   ", encoding="utf-8")
    (tmp_path / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    (tmp_path / "mixed.txt").write_bytes(b"report \x81\x8d\x8f\x90\x9d end")
    (tmp_path / "broken.json").write_text('{"a": [1, 2', encoding="utf-8")
    (tmp_path / "broken.ipynb").write_text("{not json", encoding="utf-8")
    (tmp_path / "fake.docx").write_text("just text", encoding="utf-8")
    (tmp_path / "ole.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512)
    assert _skip_reason(tmp_path / "empty.md") == "empty file"
    assert "only whitespace" in _skip_reason(tmp_path / "blank.txt")
    assert "binary data, not text (looks like a PNG image)" == _skip_reason(tmp_path / "image.md")
    assert _skip_reason(tmp_path / "mixed.txt").startswith("undecodable text")
    assert _skip_reason(tmp_path / "broken.json").startswith("malformed JSON (line 1")
    assert _skip_reason(tmp_path / "broken.ipynb").startswith("malformed notebook")
    assert _skip_reason(tmp_path / "fake.docx") == "not a valid DOCX (not a Word zip package)"
    assert "encrypted or legacy Word file" in _skip_reason(tmp_path / "ole.docx")


def test_pdf_failures_say_why(tmp_path: Path) -> None:
    import pypdf

    good = make_pdf(tmp_path / "good.pdf", ["Expense policy page one.", "Page two."])
    data = good.read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.4\n" + b"this is not a pdf body " * 20 + b"\n%%EOF\n")
    (tmp_path / "renamed.pdf").write_text("a text file with a .pdf name", encoding="utf-8")
    make_pdf(tmp_path / "scan.pdf", ["", ""])
    writer = pypdf.PdfWriter(clone_from=str(good))
    writer.encrypt(user_password="s3cret", owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    (tmp_path / "locked.pdf").write_bytes(buffer.getvalue())
    writer = pypdf.PdfWriter(clone_from=str(good))
    writer.encrypt(user_password="", owner_password="owner")  # "protected" but readable by anyone
    buffer = io.BytesIO()
    writer.write(buffer)
    (tmp_path / "owner-only.pdf").write_bytes(buffer.getvalue())

    assert [s.page for s in _load(good).sections] == [1, 2]
    assert _skip_reason(tmp_path / "truncated.pdf") == "truncated PDF (no end-of-file marker)"
    assert _skip_reason(tmp_path / "garbage.pdf").startswith(("malformed PDF", "no extractable text"))
    assert _skip_reason(tmp_path / "renamed.pdf") == "not a PDF (no %PDF header)"
    assert _skip_reason(tmp_path / "scan.pdf").startswith("no extractable text")
    assert _skip_reason(tmp_path / "locked.pdf") == "encrypted PDF (password required)"
    assert "Expense policy" in _load(tmp_path / "owner-only.pdf").sections[0].text


def test_size_cap_is_checked_before_reading_and_memory_stays_bounded(tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as handle:  # sparse: 300 MB on paper, nothing on disk
        handle.truncate(300 * 1024 * 1024)
    cap = 1024 * 1024
    tracemalloc.start()
    try:
        reason = _skip_reason(huge, max_bytes=cap)
        with pytest.raises(SkipFile):
            read_bytes(huge, cap)  # even a direct read stops at the cap
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason.startswith("larger than the size cap (300.0 MB > 1.0 MB") and "KB_MAX_FILE_MB" in reason
    assert peak < 8 * cap


def test_docx_zip_bomb_is_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document>" + " " * (3 * 1024 * 1024) + "</w:document>")
    assert path.stat().st_size < 64 * 1024
    assert "expands beyond the size cap" in _skip_reason(path, max_bytes=1024 * 1024)


# ---------------------------------------------------------------- discovery


def test_discovery_reports_symlinks_that_loop_dangle_or_leave_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "ok.md").write_text("# OK\n", encoding="utf-8")
    outside = tmp_path / "secret.md"
    outside.write_text("TOP SECRET", encoding="utf-8")
    (root / "leak.md").symlink_to(outside)
    (root / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    (root / "loop-a.md").symlink_to(root / "loop-b.md")
    (root / "loop-b.md").symlink_to(root / "loop-a.md")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    (root / "alias.md").symlink_to(root / "ok.md")  # inside the folder: read like a file
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / ".env").write_text("TOKEN=x", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "config.md").write_text("x", encoding="utf-8")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    found = discover([root])
    reasons = {s.source: s.reason for s in found.skipped}
    assert sorted(f.source for f in found.files) == ["alias.md", "ok.md"]
    assert reasons["leak.md"].startswith("symlink points outside the folder")
    assert reasons["dangling.md"].startswith("broken symlink")
    assert reasons["loop-a.md"] == "symlink loop" and reasons["loop-b.md"] == "symlink loop"
    assert reasons["sub/up"].startswith("symlink loop")
    assert reasons["photo.png"] == "unsupported file type '.png'"
    assert not any(s.startswith((".env", ".git", "__pycache__")) for s in reasons)


def test_non_ascii_names_and_spaces_are_fine(tmp_path: Path) -> None:
    folder = tmp_path / "Équipe données" / "résumé 2024"
    folder.mkdir(parents=True)
    path = folder / "Politique d’accès – ü.md"
    path.write_text("# Accès\n\nLes badges sont émis à l’accueil.\n", encoding="utf-8")
    found = discover([tmp_path / "Équipe données"])
    assert [f.source for f in found.files] == ["résumé 2024/Politique d’accès – ü.md"]
    chunk = split_document(load(found.files[0]))[0]
    assert chunk.metadata["source"] == "résumé 2024/Politique d’accès – ü.md" and "émis" in chunk.text


def test_unreadable_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "private.md"
    path.write_text("# Private\n", encoding="utf-8")
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: make the OS refuse the open as it would for a user
        import builtins

        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if Path(str(file)) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    try:
        assert _skip_reason(path) == "cannot read: Permission denied"
    finally:
        path.chmod(0o644)
