"""Document-level answers: the answer prompt gets the retrieved chunks grouped by page (pages in the
order of their best chunk), and citations name the page and the section."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import KbRunner
from tests.databricks_stub import DatabricksStub, Reply

QUESTION = "SEV1 acknowledge time and vacation days carry over"


def contiguous(sources: list[str]) -> bool:
    seen: list[str] = []
    for source in sources:
        if seen and seen[-1] != source and source in seen:
            return False
        if not seen or seen[-1] != source:
            seen.append(source)
    return True


def test_answer_passages_are_grouped_by_page_and_cite_sections(indexed: Path, databricks: DatabricksStub, kb: KbRunner) -> None:
    searched = json.loads(kb("search", QUESTION, "--json").stdout)["results"]
    assert not contiguous([r["source"] for r in searched]), [r["source"] for r in searched]  # search interleaves pages
    databricks.enqueue(Reply("23 days [1]; 4 carry over [2]."))
    data = json.loads(kb("ask", QUESTION, "--json").stdout)
    passages = data["passages"]
    assert sorted(p["text"] for p in passages) == sorted(r["text"] for r in searched)  # same chunks, regrouped
    assert passages[0]["text"] == searched[0]["text"]  # the best chunk stays passage 1
    sources = [p["source"] for p in passages]
    assert contiguous(sources) and sources.count("hr/pto.md") >= 2
    pages = list(dict.fromkeys(sources))
    assert pages == list(dict.fromkeys(r["source"] for r in searched))  # pages ordered by their best chunk
    cited = data["sources"]
    assert [c["source"] for c in cited] == ["hr/pto.md", "hr/pto.md"]
    assert all(c.get("section") for c in cited) and cited[0]["section"] != cited[1]["section"]
    prompt = "\n".join(str(m["content"]) for m in databricks.chat_requests()[0]["messages"])
    assert prompt.index('<passage n="1" source="hr/pto.md"') < prompt.index('<passage n="2" source="hr/pto.md"')
