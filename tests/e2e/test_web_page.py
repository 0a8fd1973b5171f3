"""The chat page in a real headless Chromium (Debian's ``chromium`` driven by Playwright's Python
package; no downloaded browser): key prompt, streamed answer, citation viewer, visible errors.

Skipped with the reason when /usr/bin/chromium is missing, except under CI=true where that fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.api import create_app
from agent.settings import load_settings
from tests.databricks_stub import DatabricksStub, Error, Reply
from tests.live_server import LiveServer, TrickleProxy

pytestmark = pytest.mark.slow

KEY = "browser-key-7d1e9f3a5c2b4d60"
ANSWER = "Full-time employees get 23 vacation days per year [1]. Unused days, up to 4, carry over until April 30 [1]."


@pytest.fixture
def site(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KB_API_KEYS", f"browser:{KEY}")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")  # a scripted failure is shown, not retried away
    databricks.default_responder = lambda body: Reply(ANSWER, chunk_size=6)
    # The stub sends its whole stream at once; through this proxy it arrives over ~1 s, like a model's.
    with TrickleProxy(databricks.port) as proxy:
        monkeypatch.setenv("base_url", f"http://127.0.0.1:{proxy.port}/serving-endpoints")
        with LiveServer(create_app(load_settings())) as server:
            yield server


def test_ask_stream_cite_and_see_errors(chromium, site: LiveServer, databricks: DatabricksStub, tmp_path: Path) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(str(exc)))
    # Script errors fail the test; the browser's own "Failed to load resource" lines for the 401 and
    # 502 answers this test provokes are not script errors.
    page.on("console", lambda msg: failures.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.goto(site.url + "/")
    assert page.title().startswith("kb")

    # Record how the answer grows, to see it stream rather than arrive at once.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.msg.assistant .text');
            const last = answers[answers.length - 1];
            if (last) window.__lengths.push(last.textContent.length);
        }).observe(document.getElementById('conversation'), {childList: true, subtree: true, characterData: true});
    }""")

    # No key yet: the API answers 401, the page says so and asks for the key, then asks again.
    page.fill("#question", "How many vacation days do I get?")
    page.press("#question", "Enter")
    page.wait_for_selector("#key-dialog[open]")
    assert "API key" in page.inner_text("#error-text")
    assert page.locator(".msg").count() == 0  # the refused exchange was taken back
    page.fill("#api-key", KEY)
    page.click("#key-save")
    assert page.evaluate("sessionStorage.getItem('kb.apiKey')") == KEY
    assert page.is_hidden("#error")

    page.wait_for_selector(".msg.assistant:not(.streaming) .sources")
    answer = page.locator(".msg.assistant").last
    assert "23 vacation days per year" in answer.inner_text()
    assert page.locator(".msg.user").last.inner_text() == "How many vacation days do I get?"
    lengths = sorted(set(page.evaluate("window.__lengths")))
    assert len([n for n in lengths if 0 < n < len("Full-time employees get 23 vacation days per year")]) >= 2

    # Click [1]: the viewer shows the cited passage and where it comes from.
    citation = answer.locator("button.cite[data-n='1']").first
    assert citation.is_enabled()
    citation.click()
    page.wait_for_selector("#viewer:not([hidden])")
    assert page.inner_text("#viewer-source") == "hr/pto.md"
    assert "23 vacation days" in page.inner_text("#viewer-text")
    assert "Vacation days" in page.inner_text("#viewer-where")
    page.click("#viewer-open")
    page.wait_for_selector("#viewer-document:not([hidden])")
    assert "Sick leave is unlimited" in page.inner_text("#viewer-document")
    shot = tmp_path / "kb-chat-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # A Databricks failure is shown, in the conversation and in the error bar.
    databricks.enqueue(Error(500, "INTERNAL_ERROR", "model crashed"))
    page.fill("#question", "And sick leave?")
    page.click("#send")
    failed = page.locator(".msg.assistant").nth(1).locator(".msg-error")
    failed.wait_for()
    assert "Databricks server error" in failed.inner_text()
    assert page.is_visible("#error") and "Databricks server error" in page.inner_text("#error-text")
    page.screenshot(path=str(tmp_path / "kb-chat-error.png"), full_page=True)

    # The key stays for the tab's session: after a reload no prompt is needed.
    page.reload()
    page.fill("#question", "How many vacation days do I get?")
    page.click("#send")
    page.wait_for_selector(".msg.assistant:not(.streaming) .sources")
    assert not page.is_visible("#key-dialog")
    history = databricks.chat_requests()
    assert history[-1]["usage_context"]["caller"] == "browser"
    assert failures == []
    context.close()
