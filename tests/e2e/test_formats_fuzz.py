"""Property-based and fuzz tests (Hypothesis) for every loader and every text function (issue 18,
"Systematic"): arbitrary bytes and hostile text in, only the project's own ``SkipFile`` out, each
example within a time budget (``deadline``) and a memory budget (``tracemalloc`` peak); then a
corpus of hostile files, generated here, through the real ``ingest`` path once.

Loaders are called directly, not through ``ingest.loaders.load``: ``load`` turns any exception into
a skip ("could not be parsed"), which would hide the parser bugs these tests are here to find.
"""

from __future__ import annotations

import hashlib
import json
import string
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.documents import LoadedDocument, Section, SkipFile, SourceFile
from ingest.formats.code import load_code
from ingest.formats.markup import MAX_TITLE_CHARS, front_matter_title, heading_text, load_markdown, load_rst, load_text
from ingest.formats.notebooks import load_ipynb
from ingest.formats.pdf import load_pdf
from ingest.formats.tabular import load_csv, load_json, load_jsonl
from ingest.formats.web import html_to_markdown, load_html
from ingest.store.lexical import STOPWORDS, tokenize
from ingest.split import CHUNK_SIZE, MAX_SECTION_CHARS, split_document

FUZZ = settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.too_slow], database=None)
MEMORY_BUDGET = 64 * 2**20  # bytes allocated at peak while loading and splitting one small example
MAX_BYTES = 50 * 2**20

# characters that exercise parsers and regular expressions: markup, quotes, separators, whitespace
# of every kind, controls, surrogate-free astral characters, the BOM
HOSTILE = "#*_`[](){}<>|\\/:;,.'\"-=~!&%$@^+?\n\r\t \u00a0\u2003\u3000\u200b\u2028\ufeff\x00\x1b\x7féü€😀"
hostile_text = st.text(alphabet=st.sampled_from(HOSTILE) | st.characters(codec="utf-8"), max_size=3000)
hostile_lines = st.lists(
    st.tuples(st.sampled_from(["", "# ", "## ", "###### ", "#", "title: ", "---", "- ", "    ", "```", "| ", "> "]),
              hostile_text.map(lambda t: t.replace("\n", " ")[:300])),
    max_size=40,
).map(lambda lines: "\n".join(prefix + text for prefix, text in lines))
any_bytes = st.one_of(
    st.binary(max_size=4000),
    hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    hostile_lines.map(lambda t: t.encode("utf-8", "surrogatepass")),
    hostile_text.map(lambda t: t.encode("utf-16")),
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the examples' files, after the parsers' lazy imports (outside the budgets)."""
    import bs4  # noqa: F401
    import pypdf  # noqa: F401

    split_document(LoadedDocument("w", "W", "markdown", [Section("# warm\n\nup")]))
    split_document(LoadedDocument("w", "W", "code", [Section("def f(): pass\n" * 200)], language="python"))
    return tmp_path_factory.mktemp("fuzz")


def _load(loader, folder: Path, name: str, data: bytes) -> LoadedDocument | None:
    """Load ``data`` as file ``name``; None for a skip. Any other exception fails the test; so does
    a peak allocation over the memory budget. A loaded document must also split."""
    path = folder / name
    path.write_bytes(data)
    tracemalloc.start()
    try:
        document = loader(SourceFile(folder, path, name), MAX_BYTES)
        chunks = split_document(document)
        _, peak = tracemalloc.get_traced_memory()
    except SkipFile as exc:
        assert str(exc).strip() and "\n" not in str(exc)  # a one-line reason
        return None
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BUDGET, f"{name}: {peak / 2**20:.0f} MB for {len(data)} bytes"
    assert isinstance(document.title, str) and len(document.title) <= 2 * MAX_TITLE_CHARS
    for number, chunk in enumerate(chunks):
        assert chunk.text.strip() and chunk.metadata["chunk"] == number
        assert len(chunk.metadata["section"]) <= MAX_SECTION_CHARS
    return document


LOADERS = [
    (load_markdown, "doc.md"), (load_text, "doc.txt"), (load_rst, "doc.rst"), (load_html, "page.html"),
    (load_ipynb, "book.ipynb"), (load_code, "code.py"), (load_code, "query.sql"), (load_code, "app.js"),
    (load_code, "conf.yaml"), (load_code, "Dockerfile"), (load_csv, "table.csv"), (load_csv, "table.tsv"),
    (load_json, "data.json"), (load_jsonl, "data.jsonl"), (load_pdf, "file.pdf"),
]


@pytest.mark.parametrize(("loader", "name"), LOADERS, ids=[name for _, name in LOADERS])
@FUZZ
@given(data=any_bytes)
def test_every_loader_takes_arbitrary_bytes(fuzz_dir: Path, loader, name: str, data: bytes) -> None:
    _load(loader, fuzz_dir, name, data)


def _notebook_cell() -> st.SearchStrategy:
    source = hostile_lines | st.lists(hostile_text, max_size=5)
    output = st.fixed_dictionaries({"output_type": st.sampled_from(["stream", "execute_result", "error", "x"]),
                                    "text": source, "data": st.dictionaries(st.just("text/plain"), source),
                                    "ename": hostile_text, "evalue": hostile_text})
    return st.fixed_dictionaries({"cell_type": st.sampled_from(["markdown", "code", "raw", "other"]), "source": source,
                                  "outputs": st.lists(output, max_size=3) | st.none() | hostile_text})


@FUZZ
@given(cells=st.lists(_notebook_cell() | st.integers() | st.none(), max_size=8),
       meta=st.dictionaries(st.sampled_from(["kernelspec", "language_info", "title"]),
                            st.dictionaries(st.sampled_from(["language", "name"]), hostile_text) | hostile_text))
def test_notebooks_of_any_shape(fuzz_dir: Path, cells: list, meta: dict) -> None:
    data = json.dumps({"cells": cells, "metadata": meta}).encode()
    _load(load_ipynb, fuzz_dir, "shaped.ipynb", data)


@FUZZ
@given(body=hostile_lines, language=st.sampled_from(["py", "sql", "scala", "r"]))
def test_databricks_source_notebooks(fuzz_dir: Path, body: str, language: str) -> None:
    comment = {"py": "#", "sql": "--", "scala": "//", "r": "#"}[language]
    text = f"{comment} Databricks notebook source\n" + body.replace("---", f"{comment} COMMAND ----------").replace(
        "# ", f"{comment} MAGIC %md\n{comment} MAGIC # ")
    _load(load_code, fuzz_dir, f"notebook.{language}", text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(rows=st.lists(st.lists(hostile_text.map(lambda t: t[:80]), max_size=6), max_size=30),
       delimiter=st.sampled_from([",", ";", "\t", "|"]), quoting=st.sampled_from([0, 1, 2]))
def test_csv_of_any_shape(fuzz_dir: Path, rows: list, delimiter: str, quoting: int) -> None:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, quoting=quoting, escapechar="\\").writerows(rows)
    _load(load_csv, fuzz_dir, "shaped.csv", out.getvalue().encode("utf-8", "surrogatepass"))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | hostile_text.map(lambda t: t[:100]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text.map(lambda t: t[:20]), inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(value=json_values)
def test_json_of_any_shape(fuzz_dir: Path, value) -> None:
    _load(load_json, fuzz_dir, "shaped.json", json.dumps(value).encode())
    _load(load_jsonl, fuzz_dir, "shaped.jsonl", (json.dumps(value) + "\n" + json.dumps([value])).encode())


@FUZZ
@given(junk=st.binary(max_size=3000), head=st.sampled_from([b"%PDF-1.4\n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b""]),
       objects=st.lists(st.sampled_from([b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n",
                                         b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n",
                                         b"3 0 obj << /Type /Page /Contents 4 0 R >> endobj\n",
                                         b"4 0 obj << /Length 20 >> stream\nBT (Hi) Tj ET\nendstream endobj\n",
                                         b"xref\n0 1\n0000000000 65535 f \n", b"trailer << /Root 1 0 R >>\n"]),
                        max_size=8))
def test_pdf_garbage(fuzz_dir: Path, junk: bytes, head: bytes, objects: list) -> None:
    _load(load_pdf, fuzz_dir, "garbage.pdf", head + b"".join(objects) + junk + b"\n%%EOF\n")


# ---------------------------------------------------------------- HTML: every visible word is kept

WORDS = iter(range(10**9))
VISIBLE_TAGS = ["div", "section", "span", "article", "p", "b", "i", "em", "aside", "header", "main", "li", "ul",
                "td", "tr", "table", "h2", "h3", "blockquote", "pre", "label", "form", "font", "custom-el", "dd"]
HIDDEN = ['<script>"{w}"</script>', "<style>/* {w} */</style>", "<template>{w}</template>",
          "<noscript>{w}</noscript>", "<!-- {w} -->", '<div hidden>{w}</div>', '<p style="display:none">{w}</p>']


def _html_tree(draw, depth: int, visible: list[str], hidden: list[str]) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "text", "element", "br", "hidden"] if depth < 6 else ["text", "br"]))
        if kind == "text":
            word = f"vis{next(WORDS)}x"
            visible.append(word)
            parts.append(f" {word} ")
        elif kind == "br":
            parts.append("<br>")
        elif kind == "hidden":
            word = f"hid{next(WORDS)}x"
            hidden.append(word)
            parts.append(draw(st.sampled_from(HIDDEN)).format(w=word))
        else:
            tag = draw(st.sampled_from(VISIBLE_TAGS))
            parts.append(f"<{tag}>{_html_tree(draw, depth + 1, visible, hidden)}</{tag}>")
    return "".join(parts)


@st.composite
def html_pages(draw) -> tuple[str, list[str], list[str]]:
    visible: list[str] = []
    hidden: list[str] = []
    body = _html_tree(draw, 0, visible, hidden)
    return f"<html><head><title>t</title></head><body>{body}</body></html>", visible, hidden


@settings(max_examples=150, deadline=2000, database=None)
@given(page=html_pages())
def test_html_keeps_every_visible_word_and_no_hidden_one(page: tuple[str, list[str], list[str]]) -> None:
    from bs4 import BeautifulSoup

    html, visible, hidden = page
    text = html_to_markdown(BeautifulSoup(html, "html.parser").body)
    words = set(text.replace("|", " ").split())
    assert [w for w in visible if w not in words] == []
    assert [w for w in hidden if w in text] == []


@FUZZ
@given(html=hostile_text | hostile_lines)
def test_html_renderer_takes_any_text(html: str) -> None:
    from bs4 import BeautifulSoup

    assert isinstance(html_to_markdown(BeautifulSoup(html, "html.parser")), str)


# ---------------------------------------------------------------- text functions

small_words = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=12)
prose = st.lists(st.tuples(small_words, st.sampled_from([" ", " ", "\n", "\n\n", ". ", ", ", "\n# ", "\n## ", "\t"])),
                 max_size=400).map(lambda pairs: "".join(w + sep for w, sep in pairs))


@FUZZ
@given(text=prose | hostile_lines, kind=st.sampled_from(["markdown", "html", "text", "rst", "code", "csv"]),
       language=st.sampled_from([None, "python", "sql", "yaml", "js", "bash", "hcl"]))
def test_splitter_loses_no_word_and_respects_sizes(text: str, kind: str, language: str | None) -> None:
    document = LoadedDocument("d", "D", kind, [Section(text, heading="h" * 1000)], language=language)
    chunks = split_document(document)
    joined = " ".join(chunk.text for chunk in chunks)
    for number, chunk in enumerate(chunks):
        assert chunk.text == chunk.text.strip() and chunk.text and chunk.metadata["chunk"] == number
        assert len(chunk.metadata["section"]) <= MAX_SECTION_CHARS
        if kind in ("text", "rst"):
            assert len(chunk.text) <= CHUNK_SIZE
    if text is not None and all(ch in string.printable for ch in text):
        lost = {w for w in text.replace("#", " ").split() if len(w) <= 12 and w not in joined}
        assert not lost


@FUZZ
@given(raw=hostile_text)
def test_heading_and_front_matter_titles_are_one_bounded_line(raw: str) -> None:
    for value in (heading_text(raw.replace("\n", " ")), front_matter_title(raw)):
        assert len(value) <= MAX_TITLE_CHARS and value == value.strip() and "\n" not in value


@FUZZ
@given(level=st.integers(1, 6), title=small_words, spaces=st.text(" \t", min_size=1, max_size=5),
       closing=st.sampled_from(["", " #", " ###", "  ##  "]))
def test_markdown_headings_read_the_same_as_commonmark(fuzz_dir: Path, level: int, title: str, spaces: str,
                                                        closing: str) -> None:
    from ingest.formats.markup import ATX_HEADING

    line = "#" * level + spaces + title + closing
    (found,) = ATX_HEADING.findall(f"intro\n{line}\nbody")
    assert (len(found[0]), heading_text(found[1])) == (level, title)
    if level == 1:
        document = _load(load_markdown, fuzz_dir, "h.md", f"{line}\n\ntext\n".encode())
        assert document is not None and document.title == title


@FUZZ
@given(text=hostile_text | prose)
def test_lexical_tokens_are_lowercase_words_without_stopwords(text: str) -> None:
    tokens = tokenize(text)
    assert all(t and t == t.lower() and t.isascii() and t.isalnum() for t in tokens)
    assert not set(tokens) & {w for w in STOPWORDS if len(w) > 4 and tokenize(w) == []}


# ---------------------------------------------------------------- a hostile corpus, ingested for real


class _HashEmbeddings:
    model_id = "test:hash-16"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]
        return [b / 255 - 0.5 + 1e-3 for b in digest]


def hostile_corpus(root: Path) -> dict[str, str | None]:
    """Write the corpus; return {name: None if it must be indexed, else a part of its skip reason}."""
    files: dict[str, tuple[bytes, str | None]] = {
        "heading-attack.md": (("# a" + " " * 5000 + "b\n\nPolicy text.\n").encode(), None),
        "front-matter-attack.md": (("---\ntitle: a" + " " * 60_000 + "b\n---\nBody text.\n").encode(), None),
        "notebook-attack.ipynb": (json.dumps({"cells": [{"cell_type": "markdown",
                                                          "source": "## a" + " " * 5000 + "b"}]}).encode(), None),
        "definitions.java": (("public\n" * 5000 + "class A {}\n").encode(), None),
        "one-long-line.txt": (("word " * 100_000).encode(), None),
        "hashes.md": (("#" * 50_000 + "\n" + "# \n" * 5000 + "text\n").encode(), None),
        "deep.html": (("<p>" + "Deep page. " * 500 + "</p>" + "<div>" * 30_000 + "deep" + "</div>" * 30_000).encode(), None),
        "policy.html": (b"<body>Direct text<div>in a div</div><span>and a span</span></body>", None),
        "js-shell.html": (("<script>" + "x=1;" * 10_000 + "</script><div id=app></div>").encode(),
                          "almost no visible text"),
        "binary.md": (bytes(range(256)) * 20, "binary data"),
        "bomb.json": (b"[" * 100_000 + b"]" * 100_000, ""),
        "broken.jsonl": (b'{"a": 1}\n{"b": \n', "malformed JSON Lines"),
        "quotes.csv": (b'a,b\n"' + b"x" * 100_000 + b"\n1,2\n", None),
        "garbage.pdf": (b"%PDF-1.4\n" + bytes(range(256)) * 50 + b"\n%%EOF\n", ""),
        "only-bom.txt": (b"\xef\xbb\xbf   \n", "no text to index"),
        "controls.txt": (b"\x01\x02\x03\x04" * 100, "binary data"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


def test_a_hostile_corpus_goes_through_the_real_ingest(tmp_path: Path) -> None:
    from ingest.sync.isolation import ParseLimits
    from ingest.sync.job import ingest

    root = tmp_path / "hostile"
    root.mkdir()
    expected = hostile_corpus(root)
    summary = ingest([root], tmp_path / "index", _HashEmbeddings(),
                     parse_limits=ParseLimits(timeout=30, memory_mb=1024), max_chunks=5000)
    skipped = {s.source: s.reason for s in summary.skipped}
    assert not [r for r in skipped.values() if "took longer" in r or "died" in r or "could not be parsed" in r], skipped
    must_index = {name for name, reason in expected.items() if reason is None}
    assert {name: skipped[name] for name in must_index if name in skipped} == {}
    for name, reason in expected.items():
        if reason:
            assert reason in skipped.get(name, "<indexed>"), (name, skipped.get(name))
    assert summary.added == len(expected) - len(skipped)
