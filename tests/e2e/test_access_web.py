"""Access control in the chat page, in a real headless Chromium (Debian's ``chromium`` driven by
Playwright; no downloaded browser; the page's CSP forbids eval, so only locators): a caller whose key
reads public documents only asks a question whose best match is an HR-only document, opens every
citation and the whole cited documents, and the HR marker never appears anywhere in the page; an HR
caller asking the same sees it. The model echoes everything it was shown (the worst model), so a
forbidden passage given to it would reach the page too.

Skipped with the reason when /usr/bin/chromium is missing, except under CI=true where that fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.api import create_app
from agent.settings import load_settings
from tests.databricks_stub import DatabricksStub, Reply
from tests.live_server import LiveServer
from tests.wire.test_access_api import HR_MARK, LEGAL_MARK, PUBLIC_MARK, write_access_corpus

pytestmark = pytest.mark.slow

KEYS = {"pub": "web-pub-key-0123456789abcdef", "hr": "web-hr-key-0123456789abcdef"}
QUESTION = "What are the salary bands and vacation payouts for 2025?"  # hr/salaries.md's own words


@pytest.fixture(scope="module")
def access_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.sync.job import ingest

    corpus = write_access_corpus(tmp_path_factory.mktemp("web-access-corpus"))
    index_dir = tmp_path_factory.mktemp("web-access-index")
    ingest([corpus], index_dir, LocalMiniLMEmbeddings())
    return index_dir


def echo(body: dict) -> Reply:
    """Everything the model was shown, back as its answer, citing [1] to [3] so sources are listed."""
    text = "\n".join(m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                     for m in body["messages"])
    return Reply("[1] [2] [3] " + text, chunk_size=40)


@pytest.fixture
def site(access_index: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch, env: Path):
    monkeypatch.setenv("KB_INDEX_DIR", str(access_index))
    monkeypatch.setenv("KB_USAGE_LEDGER", str(env.parent / "usage.sqlite"))
    monkeypatch.setenv("KB_API_KEYS", f"pub:{KEYS['pub']},hr:{KEYS['hr']}:hr")
    saved = databricks.default_responder
    databricks.default_responder = echo
    try:
        with LiveServer(create_app(load_settings(min_relevance=0.0))) as server:
            yield server
    finally:
        databricks.default_responder = saved


def ask_and_open_everything(browser, url: str, key: str) -> tuple[str, list[str]]:
    """Ask QUESTION with ``key``, open every source and its whole document; the page's HTML after each
    step (joined) and the sources the viewer showed."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(str(exc)))
    page.goto(url + "/")
    page.locator("#key-button").click()
    page.locator("#key-dialog[open]").wait_for()
    page.locator("#api-key").fill(key)
    page.locator("#key-save").click()
    page.locator("#question").fill(QUESTION)
    page.locator("#send").click()
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for(timeout=60_000)
    snapshots = [page.content()]
    shown: list[str] = []
    buttons = page.locator(".msg.assistant .sources li button")
    assert buttons.count() >= 1
    for i in range(buttons.count()):
        buttons.nth(i).click()
        page.locator("#viewer:not([hidden])").wait_for()
        shown.append(page.locator("#viewer-source").inner_text())
        snapshots.append(page.content())
        page.locator("#viewer-open").click()
        page.locator("#viewer-document:not([hidden])").wait_for()
        assert page.locator("#viewer-document").inner_text().strip()  # the document was shown
        snapshots.append(page.content())
        page.locator("#viewer-close").click()
    citations = page.locator(".msg.assistant button.cite")
    for i in range(citations.count()):  # the [n] markers in the answer open the same viewer
        if citations.nth(i).is_enabled():
            citations.nth(i).click()
            snapshots.append(page.content())
            page.locator("#viewer-close").click()
    assert page.locator("#error").is_hidden()
    assert failures == []
    context.close()
    return "\n".join(snapshots), shown


def test_a_public_caller_never_sees_the_hr_document_in_the_page(chromium, site: LiveServer) -> None:
    html, shown = ask_and_open_everything(chromium, site.url, KEYS["pub"])
    assert HR_MARK not in html and LEGAL_MARK not in html
    assert "hr/salaries.md" not in html and "legal/contract.md" not in html  # not even the names
    assert shown and all(source.startswith("public/") for source in shown)
    assert PUBLIC_MARK in html  # what the caller may read is still there

    html, shown = ask_and_open_everything(chromium, site.url, KEYS["hr"])
    assert "hr/salaries.md" in shown  # the best match, for a caller who may read it
    assert HR_MARK in html and LEGAL_MARK not in html
