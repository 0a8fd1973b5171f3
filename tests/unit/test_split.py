"""Splitting rules: headings, packing of small units, sizes, labels, determinism."""

from __future__ import annotations

from ingest.documents import LoadedDocument, Section
from ingest.split import CHUNK_SIZE, context_header, split_document


def test_markdown_splits_by_heading_then_size() -> None:
    long_section = " ".join(f"Sentence {i} about the deploy freeze." for i in range(80))
    text = f"# Handbook\n\nIntro.\n\n## Deploys\n\n{long_section}\n\n## Holidays\n\nTwo weeks in August.\n"
    chunks = split_document(LoadedDocument("h.md", "Handbook", "markdown", [Section(text)]))
    sections = [c.metadata["section"] for c in chunks]
    assert sections[0] == "Handbook" and sections[-1] == "Handbook > Holidays"
    assert sections.count("Handbook > Deploys") >= 3
    assert all(len(c.text) <= CHUNK_SIZE for c in chunks)
    assert [c.metadata["chunk"] for c in chunks] == list(range(len(chunks)))


def test_small_units_pack_only_under_the_same_heading() -> None:
    sections = [Section(f"cell {i} text", heading="A", unit=i) for i in range(1, 4)]
    sections += [Section("cell 4 text", heading="B", unit=4), Section("cell 5 text", heading="B", unit=5)]
    document = LoadedDocument("n.ipynb", "N", "notebook", sections, unit_name="cell")
    chunks = split_document(document)
    assert [(c.metadata["section"], c.text) for c in chunks] == [
        ("A · cells 1-3", "cell 1 text\n\ncell 2 text\n\ncell 3 text"),
        ("B · cells 4-5", "cell 4 text\n\ncell 5 text"),
    ]


def test_an_oversized_unit_is_split_and_keeps_its_prefix() -> None:
    header = "| id | comment |\n|---|---|"
    giant = "| 7 | " + "very long comment " * 120 + "|"
    document = LoadedDocument("t.csv", "t.csv", "csv", [Section("| 1 | short |", unit=2, prefix=header),
                                                        Section(giant, unit=3, prefix=header)],
                              unit_name="row", joiner="\n")
    chunks = split_document(document)
    assert len(chunks) >= 3
    assert all(c.text.startswith(header + "\n") and len(c.text) <= CHUNK_SIZE for c in chunks)
    assert chunks[0].metadata["section"] == "row 2" and chunks[-1].metadata["section"] == "row 3"


def test_pages_never_merge_and_splitting_is_deterministic() -> None:
    document = LoadedDocument("p.pdf", "P", "pdf", [Section("Page one text.", page=1), Section("Page two text.", page=2)])
    first = split_document(document)
    assert [(c.metadata["page"], c.text) for c in first] == [(1, "Page one text."), (2, "Page two text.")]
    assert split_document(document) == first


def test_chunks_are_embedded_under_their_title_and_section_path_but_read_clean() -> None:
    text = "# Paid time off\n\nIntro.\n\n## Carry-over\n\nUp to 5 days move to next year.\n"
    chunks = split_document(LoadedDocument("hr/pto.md", "Paid time off", "markdown", [Section(text)]))
    last = chunks[-1]
    assert last.metadata["section"] == "Paid time off > Carry-over"
    assert last.metadata["context"] == "Paid time off › Carry-over"  # the heading repeating the title is said once
    assert last.embedded == "Paid time off › Carry-over\n\n" + last.text
    assert last.text.startswith("## Carry-over") and "›" not in last.text
    plain = split_document(LoadedDocument("hr/pto.md", "Paid time off", "markdown", [Section(text)]), context=False)
    assert "context" not in plain[-1].metadata and plain[-1].embedded == plain[-1].text


def test_context_header_keeps_the_longer_of_a_title_and_a_heading_that_repeat() -> None:
    assert context_header("datetime — Python 3.11 documentation", "datetime > Aware and Naive Objects") == (
        "datetime — Python 3.11 documentation › Aware and Naive Objects")
    assert context_header("Expenses", "Expenses policy > Meals") == "Expenses policy › Meals"
    assert context_header("", "") == "" and context_header("T", "") == "T"
    long = context_header("T" * 200, "S" * 500)
    assert len(long) == 300 and long.endswith("…")  # the header leaves most of the model's window to the chunk
