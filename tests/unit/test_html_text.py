"""HTML pages: every visible text is indexed, wherever it sits (issue 18, item 4), and a page that
yields almost nothing is reported instead of silently indexed as an empty shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.loaders import SkipFile, SourceFile, load
from ingest.sync.records import NoRecords
from ingest.split import split_document
from ingest.sync.plan import make_plan

# The page of the issue: only "# Expense policy" was indexed, with no warning.
EXPENSE_POLICY = """<!doctype html>
<html><head><title>Expense policy</title><style>.x{color:red}</style></head>
<body>
<h1>Expense policy</h1>
This policy applies to every employee and contractor.
<div class="intro">Submit expenses within 30 days of purchase.</div>
<section>
  <h2>Meals</h2>
  <div>Meals are reimbursed up to <span class="amount">45 EUR</span> per day.</div>
  <span>Alcohol is never reimbursed.</span>
</section>
<section>
  <h2>Travel</h2>
  <div><div><div>Book economy class for flights under six hours.</div></div></div>
  Trains: second class.<br>Taxis only with a receipt.
  <article>Hotels up to 150 EUR per night in Berlin.</article>
  <table><tr><td>Munich</td><td><div>180 EUR</div></td></tr></table>
</section>
<aside>Questions go to finance-help.</aside>
</body></html>
"""
SENTENCES = [
    "This policy applies to every employee and contractor.",
    "Submit expenses within 30 days of purchase.",
    "Meals are reimbursed up to 45 EUR per day.",
    "Alcohol is never reimbursed.",
    "Book economy class for flights under six hours.",
    "Trains: second class.",
    "Taxis only with a receipt.",
    "Hotels up to 150 EUR per night in Berlin.",
    "| Munich | 180 EUR |",
    "Questions go to finance-help.",
]


def _write(tmp_path: Path, html: str, name: str = "page.html") -> SourceFile:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return SourceFile(tmp_path, path, name)


def test_the_expense_policy_page_is_indexed_in_full(tmp_path: Path) -> None:
    document = load(_write(tmp_path, EXPENSE_POLICY))
    chunks = split_document(document)
    indexed = "\n".join(chunk.text for chunk in chunks)
    missing = [sentence for sentence in SENTENCES if sentence not in indexed]
    assert not missing
    assert document.title == "Expense policy"
    by_section = {chunk.metadata["section"]: chunk.text for chunk in chunks}  # headings still make sections
    assert "45 EUR" in by_section["Expense policy > Meals"]
    assert "economy class" in by_section["Expense policy > Travel"]
    assert "color:red" not in indexed


def test_what_a_browser_does_not_show_is_left_out(tmp_path: Path) -> None:
    html = """<html><head><title>T</title><script>var tracking = 1;</script></head><body>
    <p>Visible one.</p><script>alert("script text")</script><style>p{}</style>
    <template><p>template text</p></template><noscript>noscript text</noscript>
    <!-- comment text --><div hidden>hidden attribute text</div>
    <p style="display: none">display none text</p><span style="VISIBILITY:hidden">visibility text</span>
    <div hidden="until-found">Found by find-in-page.</div>
    <span aria-hidden="true">Decorative but visible.</span>
    <nav>Home | Wiki | Search</nav><div role="navigation">menu text</div>
    <article><p>Article body.</p><footer>Article byline.</footer></article>
    <svg><title>svg tooltip</title><text>Chart label.</text></svg>
    <footer>Copyright page footer</footer></body></html>"""
    text = load(_write(tmp_path, html)).sections[0].text
    for kept in ("Visible one.", "Found by find-in-page.", "Decorative but visible.", "Article body.",
                 "Article byline.", "Chart label."):
        assert kept in text
    for dropped in ("tracking", "script text", "p{}", "template text", "noscript text", "comment text",
                    "hidden attribute text", "display none text", "visibility text", "Home | Wiki", "menu text",
                    "svg tooltip", "page footer"):
        assert dropped not in text


def test_structure_becomes_light_markdown(tmp_path: Path) -> None:
    html = """<body><h2>Steps</h2><ul><li>First <b>bold</b> step</li><li><p>Second</p></li></ul>
    <pre>line 1
    # not a heading</pre><table><tr><th>Office</th><th>Gateway</th></tr>
    <tr><td>Berlin</td><td>ber|1</td></tr></table><p>Inline<i>join</i>ed words.</p></body>"""
    text = load(_write(tmp_path, html)).sections[0].text
    assert "## Steps" in text and "- First bold step\n- Second" in text
    assert "```\nline 1\n    # not a heading\n```" in text
    assert "| Office | Gateway |\n| Berlin | ber\\|1 |" in text
    assert "Inlinejoined words." in text  # inline elements do not split words


def test_deeply_nested_and_unclosed_markup_loses_nothing(tmp_path: Path) -> None:
    filler = "<p>" + "Filler words. " * 500 + "</p>"  # not a near-empty page: that one is reported
    html = filler + "<div>" * 20_000 + "Deep text." + "</div>" * 20_000 + "<span>" * 5_000 + "Unclosed text."
    text = load(_write(tmp_path, html)).sections[0].text  # no RecursionError: the walk is iterative
    assert "Deep text." in text and "Unclosed text." in text


def test_a_page_with_almost_no_visible_text_is_reported(tmp_path: Path) -> None:
    shell = ("<html><head><title>App</title><script>" + "var bundle = 1;" * 3000 + "</script></head>"
             "<body><div id=app>Loading</div><noscript>Enable JavaScript</noscript></body></html>")
    with pytest.raises(SkipFile, match="almost no visible text"):
        load(_write(tmp_path, shell, "app.html"))
    plan = make_plan([tmp_path], NoRecords())  # reported like every other skipped file
    assert [(s.source, "almost no visible text" in s.reason) for s in plan.skipped] == [("app.html", True)]


def test_a_large_page_with_real_text_is_indexed_not_reported(tmp_path: Path) -> None:
    words = " ".join(f"word{i}" for i in range(500))
    html = "<html><head><script>" + "x=1;" * 50_000 + "</script></head><body><div>" + words + "</div></body></html>"
    text = load(_write(tmp_path, html)).sections[0].text  # 200 KB of script, 4 KB of text: under 1%, still kept
    assert "word0" in text and "word499" in text
    small = load(_write(tmp_path, "<div>Short note.</div>", "small.html"))
    assert small.sections[0].text == "Short note."


def test_text_outside_the_body_element_is_kept(tmp_path: Path) -> None:
    html = "<html><head><title>T</title></head>Before body.<body><p>In body.</p></body></html>After html."
    text = load(_write(tmp_path, html)).sections[0].text  # browsers show both; html.parser leaves them outside
    assert "Before body." in text and "In body." in text and "After html." in text and "T" not in text.split()


def test_documentation_chrome_marked_by_class_is_left_out(tmp_path: Path) -> None:
    html = """<html><head><title>CREATE TABLE</title></head><body>
    <div class="navheader"><table><tr><td><a href="p.html">Prev</a></td><td>SQL Commands</td></tr></table></div>
    <div class="refentry"><h2>CREATE TABLE<a class="headerlink" href="#x">¶</a></h2><p>Define a new table.</p>
    <section><div class="footer">Section footer kept.</div></section></div>
    <div class="sphinxsidebar">Quick search box</div><ul class="breadcrumbs"><li>Docs</li><li>SQL</li></ul>
    <div class="navfooter"><table><tr><td>Prev</td><td>Up</td><td>Next</td></tr></table></div>
    <div class="footer">© Copyright 2001-2026. Created using Sphinx.</div></body></html>"""
    text = load(_write(tmp_path, html)).sections[0].text
    assert "## CREATE TABLE\n" in text and "Define a new table." in text and "¶" not in text
    for dropped in ("Prev", "SQL Commands", "Quick search", "Docs", "Copyright"):
        assert dropped not in text
    assert "Section footer kept." in text  # a footer div inside a section belongs to that section


def test_the_site_suffix_leaves_the_title_and_in_page_contents_are_left_out(tmp_path: Path) -> None:
    html = """<html><head><title>subprocess — Subprocess management — Python 3.11 documentation</title></head>
    <body><div class="toc">Table of Contents 1. Using 2. Security</div>
    <div class="toctree-wrapper"><ul><li>Other page heading</li></ul></div>
    <h1>subprocess — Subprocess management<a class="headerlink" href="#s">¶</a></h1>
    <h2>Using the module</h2><dl class="py function"><dt id="subprocess.run">subprocess.run(<em>args</em>)</dt>
    <dd><p>Run the command described by args.</p></dd></dl></body></html>"""
    document = load(_write(tmp_path, html))
    assert document.title == "subprocess — Subprocess management"
    text = document.sections[0].text
    assert "Table of Contents" not in text and "Other page heading" not in text
    assert "subprocess.run(args)" in text and "Run the command" in text
    chunk = next(c for c in split_document(document) if "Run the command" in c.text)
    assert chunk.metadata["context"] == "subprocess — Subprocess management › Using the module"


def test_a_title_that_only_starts_like_the_heading_is_kept(tmp_path: Path) -> None:
    html = "<html><head><title>Expenses and travel</title></head><body><h1>Expenses</h1><p>Text.</p></body></html>"
    assert load(_write(tmp_path, html)).title == "Expenses and travel"
