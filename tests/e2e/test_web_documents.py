"""The web page's Documents view, example questions, kb-agent steps shown live and uploads by writers,
in a real headless Chromium (Debian's ``/usr/bin/chromium``; skipped with the reason when it is
missing, except under CI=true). Screenshots of the Documents view go to ``.artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.api import create_app
from agent.settings import load_settings
from tests.databricks_stub import DatabricksStub, Reply
from tests.e2e.test_web_page_ux import AXE, SHOTS, Watch
from tests.live_server import LiveServer

pytestmark = pytest.mark.slow

WRITER, READER = "web-writer-key-5c1e9a0b7d3f2468", "web-reader-key-8a2d4f6b0c1e3579"
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
QUESTION = "How many vacation days do I get?"


@pytest.fixture
def site(corpus: Path, databricks: DatabricksStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A server over its own copy of the corpus (uploads write into it)."""
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

    knowledge = tmp_path / "knowledge"
    shutil.copytree(corpus, knowledge)
    ingest([knowledge], tmp_path / "index", LocalMiniLMEmbeddings())
    monkeypatch.setenv("KB_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("KB_KNOWLEDGE_DIR", str(knowledge))
    monkeypatch.setenv("KB_USAGE_LEDGER", str(tmp_path / "usage.sqlite"))
    monkeypatch.setenv("KB_API_KEYS", f"ann:{WRITER}:writer,bob:{READER}")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    with LiveServer(create_app(load_settings())) as server:
        yield server


def _page(chromium, site: LiveServer, key: str, viewport=DESKTOP, *, bypass_csp: bool = False):
    context = chromium.new_context(viewport=viewport, bypass_csp=bypass_csp)
    context.add_init_script(f"sessionStorage.setItem('kb.apiKey', {json.dumps(key)})")
    page = context.new_page()
    watch = Watch(page)
    page.goto(site.url + "/")
    return context, page, watch


def _axe(page) -> list[str]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
    }""")


def test_agent_tool_calls_show_before_the_answer(chromium, site: LiveServer, databricks: DatabricksStub) -> None:
    from playwright.sync_api import expect

    def respond(body: dict) -> Reply:
        if body.get("tools") and not any(m.get("role") == "tool" for m in body["messages"]):
            return Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days"}}])
        return Reply("Full-time employees get 23 vacation days [1].", chunk_size=8, delay=3.0)

    databricks.default_responder = respond
    context, page, watch = _page(chromium, site, READER)
    page.get_by_label("Model").select_option("kb-agent")
    page.get_by_label("Your question").fill(QUESTION)
    page.get_by_label("Your question").press("Enter")
    answer = page.locator(".msg.assistant").last
    # the tool call and its result are on the page while the model is still writing nothing
    expect(answer.locator(".steps")).to_contain_text("search_knowledge", timeout=2500)
    expect(answer.locator(".steps li")).to_contain_text("passages", timeout=2500)  # the result's summary
    assert "streaming" in (answer.get_attribute("class") or "")
    assert answer.locator(".text").inner_text().strip() == ""
    expect(answer.locator(".status")).to_contain_text("search_knowledge")
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for(timeout=15_000)
    assert answer.locator(".steps li").count() == 1  # call and result are one line
    assert "23 vacation days" in answer.locator(".text").inner_text()
    assert watch.errors == []
    context.close()


@pytest.mark.parametrize("name,viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_documents_view_filter_viewer_examples(chromium, site: LiveServer, name: str, viewport: dict) -> None:
    from playwright.sync_api import expect

    context, page, watch = _page(chromium, site, READER, viewport, bypass_csp=True)
    examples = page.get_by_role("list", name="Try asking").get_by_role("button")
    expect(examples.first).to_contain_text("What does “")
    assert 1 <= examples.count() <= 3
    assert _axe(page) == []

    page.get_by_role("button", name="Documents").click()
    view = page.get_by_role("region", name="Documents")
    expect(view).to_be_visible()
    items = view.get_by_role("list", name="Indexed documents").get_by_role("listitem")
    expect(items.first).to_be_visible()
    total = items.count()
    assert total >= 3
    expect(view.locator("#documents-count")).to_have_text(f"{total} documents")
    first = items.first.inner_text()
    assert "chunk" in first and "indexed " in first
    # writers only: a reader sees no upload zone
    expect(page.locator("#upload")).to_be_hidden()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-5-documents.png"))
    assert _axe(page) == []

    view.get_by_label("Filter").fill("pto")
    expect(items).to_have_count(1)
    expect(view.locator("#documents-count")).to_have_text(f"1 of {total} documents match")
    assert "hr/pto.md" in items.first.inner_text()
    items.first.get_by_role("button").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-source")).to_have_text("hr/pto.md")
    expect(page.locator("#viewer-document")).to_be_visible()
    expect(page.locator("#viewer-document")).to_contain_text("vacation")
    page.screenshot(path=str(SHOTS / f"{name}-6-documents-viewer.png"))
    assert _axe(page) == []
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    page.keyboard.press("Escape")
    expect(view).to_be_hidden()
    expect(page.locator("#conversation")).to_be_visible()
    assert watch.errors == []
    context.close()


def test_a_writer_uploads_by_drop_and_picker(chromium, site: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context, page, watch = _page(chromium, site, WRITER, bypass_csp=True)
    page.get_by_role("button", name="Documents").click()
    zone = page.locator("#upload-zone")
    expect(zone).to_be_visible()
    expect(page.locator("#upload-hint")).to_contain_text("up to")

    # drag and drop: a DataTransfer with a Markdown file and a program kb does not read
    drop = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(['# Bike storage\\n\\nBikes go in the basement cage, code quasarbike.\\n'],
                              'bike storage.md', {type: 'text/markdown'}));
        dt.items.add(new File(['MZ\\u0000\\u0001'], 'tool.exe', {type: 'application/octet-stream'}));
        return dt;
    }""")
    zone.dispatch_event("drop", {"dataTransfer": drop})
    uploads = page.get_by_role("list", name="Uploads").get_by_role("listitem")
    expect(uploads).to_have_count(2)
    expect(uploads.nth(0)).to_contain_text("added: uploads/bike storage.md", timeout=120_000)
    expect(uploads.nth(1)).to_contain_text("only files named like", timeout=120_000)
    assert "failed" in (uploads.nth(1).get_attribute("class") or "")
    view = page.get_by_role("region", name="Documents")
    expect(view.get_by_role("button", name="Bike storage")).to_be_visible(timeout=10_000)
    page.screenshot(path=str(SHOTS / "desktop-7-documents-upload.png"))
    assert _axe(page) == []

    # the file picker
    notes = tmp_path / "Desk booking.md"
    notes.write_text("# Desk booking\n\nBook desks in the app.\n", encoding="utf-8")
    page.locator("#upload-input").set_input_files(str(notes))
    expect(uploads.nth(2)).to_contain_text("added: uploads/Desk booking.md", timeout=120_000)
    assert uploads.nth(2).locator("progress").get_attribute("value") == "100"
    expect(view.get_by_role("button", name="Desk booking")).to_be_visible(timeout=10_000)
    assert watch.errors == []
    context.close()
