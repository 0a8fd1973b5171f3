"""The chat page's user experience in a real headless Chromium (Debian's ``chromium``, Playwright's
Python package, no downloaded browser): Markdown rendered and sanitized (hostile answers and
documents stay inert), phone width, progress while waiting, conversations kept in localStorage,
errors in plain words, keyboard use and axe-core accessibility checks, and screenshots of the main
states at desktop and phone width in ``.artifacts/screenshots/``.

Skipped with the reason when /usr/bin/chromium is missing, except under CI=true where that fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.api import create_app
from agent.settings import load_settings
from tests.databricks_stub import DatabricksStub, Error, Reply
from tests.live_server import LiveServer, TrickleProxy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).resolve().parents[1] / "assets" / "axe.min.js"
SHOTS = ROOT / ".artifacts" / "screenshots"
KEY = "browser-key-ux-4b8e2d71c9a3f650"
QUESTION = "How many vacation days do I get?"
ANSWER = (
    "## Vacation\n\nFull-time employees get **23 vacation days** per year [1].\n\n"
    "| kind | days |\n|---|---|\n| vacation | 23 |\n| carry-over | 4 |\n\n"
    "- Unused days, up to 4, carry over until April 30 [1].\n- Ask in `Beehive`."
)
# Everything here must render inert: no script runs, no handler, no frame, no javascript: link.
HOSTILE = (
    "Answer with **bold** and a [safe link](https://example.com/policy) [1].\n\n"
    "<script>window.__pwned = 'script'; alert('script')</script>\n\n"
    "<img src=x onerror=\"window.__pwned='img'; alert('img')\">\n\n"
    "[click me](javascript:window.__pwned='link';alert('link'))\n\n"
    "<iframe src=\"javascript:alert('iframe')\"></iframe>\n\n"
    "<a href=\"data:text/html,<script>alert(1)</script>\">data link</a> "
    "<svg><script>alert('svg')</script></svg> <math><mi xlink:href=\"javascript:alert(1)\">m</mi></math>\n\n"
    "<div onclick=\"alert('div')\" style=\"position:fixed;inset:0\" id=\"question\">clobber</div>\n\n"
    "<form action=\"https://evil.example\"><input name=\"x\"><button>go</button></form>"
)
HOSTILE_DOC_MD = "# Policy\n\nSick leave is unlimited.\n\n" + HOSTILE
HOSTILE_DOC_HTML = (
    "<!doctype html><html><head><title>x</title><script>alert('head')</script>"
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\"></head>"
    "<body onload=\"alert('body')\"><h1>VPN</h1><p>Sick leave is unlimited.</p>" + HOSTILE
    + "<object data=\"javascript:alert(1)\"></object><embed src=\"javascript:alert(1)\"></body></html>"
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _answers(text: str):
    """A stub responder: kb-agent (tools offered) first searches, then answers ``text``; kb-rag answers."""
    def respond(body: dict) -> Reply:
        if body.get("tools") and not any(m.get("role") == "tool" for m in body["messages"]):
            return Reply("", tool_calls=[{"name": "search_knowledge", "arguments": {"query": "vacation days per year"}}])
        return Reply(text, chunk_size=12)
    return respond


@pytest.fixture
def site(indexed: Path, databricks: DatabricksStub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KB_API_KEYS", f"browser:{KEY}")
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    databricks.default_responder = _answers(ANSWER)
    with TrickleProxy(databricks.port) as proxy:
        monkeypatch.setenv("base_url", f"http://127.0.0.1:{proxy.port}/serving-endpoints")
        with LiveServer(create_app(load_settings())) as server:
            yield server


class Watch:
    """Script errors, console errors and dialogs of a page (none expected unless said)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.parse_reports = 0
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, msg) -> None:
        if msg.type != "error" or msg.text.startswith("Failed to load resource"):
            return
        # Chromium checks the CSP when an on* or style attribute is merely parsed, also in the inert document
        # DOMPurify parses into (no browsing context: nothing could run), and reports it as a
        # violation at the parser's line. Counted apart; anything else is an error.
        where = (msg.location or {}).get("url", "")
        if msg.text.startswith(("Executing inline event handler violates", "Applying inline style violates")) and \
                where.endswith("/static/vendor/purify.min.js"):
            self.parse_reports += 1
            return
        self.errors.append(f"{msg.text} ({where})")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()


def _page(chromium, site: LiveServer, viewport=DESKTOP, *, key: bool = True, bypass_csp: bool = False):
    context = chromium.new_context(viewport=viewport, bypass_csp=bypass_csp)
    if key:
        context.add_init_script(f"sessionStorage.setItem('kb.apiKey', {json.dumps(KEY)})")
    page = context.new_page()
    watch = Watch(page)
    page.goto(site.url + "/")
    return context, page, watch


def _ask(page, question: str = QUESTION, *, wait: str = ".sources") -> None:
    before = page.locator(".msg.assistant").count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    from playwright.sync_api import expect

    node = page.locator(".msg.assistant").nth(before)
    node.wait_for()
    expect(node).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=30_000)
    if wait:
        node.locator(wait).wait_for()


def _assert_inert(page, scope: str) -> None:
    """Nothing active survived in ``scope``: no script/frame/object/form, no on* handler, no style
    attribute, no id, no javascript:/data: link, and every link opens without opener/referrer."""
    report = page.evaluate("""(scope) => {
        const out = {tags: [], handlers: [], hrefs: [], ids: [], styles: [], links: []};
        for (const root of document.querySelectorAll(scope)) {
            for (const el of root.querySelectorAll('*')) {
                const tag = el.tagName.toLowerCase();
                if (['script', 'iframe', 'object', 'embed', 'form', 'input', 'svg', 'math', 'img', 'meta', 'style'].includes(tag)) out.tags.push(tag);
                for (const attr of el.attributes) {
                    if (attr.name.startsWith('on')) out.handlers.push(tag + ' ' + attr.name);
                    if (attr.name === 'style') out.styles.push(tag);
                    if (attr.name === 'id' || attr.name === 'name') out.ids.push(tag + ' ' + attr.value);
                    if (['href', 'src', 'action', 'data', 'xlink:href'].includes(attr.name)
                        && /^\\s*(javascript|data|vbscript):/i.test(attr.value)) out.hrefs.push(attr.value);
                }
                if (tag === 'a' && el.hasAttribute('href')) out.links.push([el.getAttribute('rel'), el.getAttribute('target')]);
            }
        }
        return out;
    }""", scope)
    assert report["tags"] == [] and report["handlers"] == [] and report["hrefs"] == [], report
    assert report["styles"] == [] and report["ids"] == [], report
    assert all(rel == "noopener noreferrer" and target == "_blank" for rel, target in report["links"]), report
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('#question').length") == 1


# ---------------------------------------------------------------- 1. Markdown, safely


def test_markdown_is_rendered(chromium, site: LiveServer) -> None:
    context, page, watch = _page(chromium, site)
    _ask(page)
    answer = page.locator(".msg.assistant").last
    assert answer.locator(".text h2").inner_text() == "Vacation"
    assert answer.locator(".text strong").first.inner_text() == "23 vacation days"
    assert answer.locator(".text table td").nth(1).inner_text() == "23"
    assert answer.locator(".text code").inner_text() == "Beehive"
    assert "**" not in answer.inner_text() and "|---|" not in answer.inner_text()
    # Citations in the rendered Markdown are still buttons that open the passage.
    cites = answer.locator("button.cite[data-n='1']")
    assert cites.count() == 2 and cites.first.is_enabled()
    cites.nth(1).click()
    page.locator("#viewer:not([hidden])").wait_for()
    assert page.inner_text("#viewer-source") == "hr/pto.md"
    assert "23 vacation days" in page.inner_text("#viewer-text")
    assert "##" not in page.inner_text("#viewer-text")
    page.click("#viewer-open")
    page.locator("#viewer-document:not([hidden])").wait_for()
    document = page.locator("#viewer-document")
    assert document.locator("h1").inner_text() == "Time Off Policy"
    assert document.locator("h2").first.inner_text() == "Vacation days"
    assert "# Time Off" not in document.inner_text()
    assert watch.errors == [] and watch.dialogs == []
    context.close()


@pytest.mark.parametrize("csp", ["enforced", "bypassed"])
def test_hostile_answer_and_documents_render_inert(chromium, site: LiveServer, databricks: DatabricksStub, csp: str) -> None:
    """With the page's CSP and without it (so the sanitizer alone must hold): nothing executes."""
    databricks.default_responder = _answers(HOSTILE)
    context, page, watch = _page(chromium, site, bypass_csp=csp == "bypassed")
    _ask(page)
    answer = page.locator(".msg.assistant").last
    assert answer.locator(".text strong").inner_text() == "bold"
    link = answer.locator(".text a", has_text="safe link")
    assert link.get_attribute("href") == "https://example.com/policy"
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert answer.locator(".text a", has_text="click me").get_attribute("href") is None
    _assert_inert(page, ".msg .text")

    # The whole document, as Markdown and as HTML, with the same payloads.
    def serve(body: str, kind: str):
        page.unroute("**/api/documents/**")
        page.route("**/api/documents/**", lambda route: route.fulfill(status=200, body=body, content_type=kind))

    serve(HOSTILE_DOC_MD, "text/plain; charset=utf-8")
    answer.locator("button.cite[data-n='1']").first.click()
    page.click("#viewer-open")
    page.locator("#viewer-document:not([hidden])").wait_for()
    assert page.locator("#viewer-document h1").inner_text() == "Policy"
    _assert_inert(page, "#viewer .md")
    serve(HOSTILE_DOC_HTML, "text/html; charset=utf-8")
    page.click("#viewer-open")
    page.locator("#viewer-document h1", has_text="VPN").wait_for()
    assert "Sick leave is unlimited" in page.inner_text("#viewer-document")
    _assert_inert(page, "#viewer .md")
    page.wait_for_timeout(300)  # give a surviving handler (onerror, onload) the chance to fire
    assert page.evaluate("window.__pwned") is None
    assert watch.dialogs == []
    assert watch.errors == [], watch.errors  # no CSP violation besides DOMPurify's parse-time reports
    if csp == "bypassed":
        assert watch.parse_reports == 0
    context.close()


# ---------------------------------------------------------------- 2. phone width


def _no_overflow(page, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate("document.body.scrollWidth") <= width
    for selector in ("#new-chat", "#key-button", "#model", "#history-toggle", "#send"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)


def test_phone_width_nothing_overflows(chromium, site: LiveServer) -> None:
    context, page, watch = _page(chromium, site, PHONE)
    _no_overflow(page, 390)
    assert not page.is_visible("#history")  # collapsed on phones
    page.click("#history-toggle")
    assert page.is_visible("#history") and page.get_attribute("#history-toggle", "aria-expanded") == "true"
    page.keyboard.press("Escape")
    assert not page.is_visible("#history")
    _ask(page)
    _no_overflow(page, 390)
    page.locator(".msg.assistant button.cite").first.click()
    page.click("#viewer-open")
    page.locator("#viewer-document:not([hidden])").wait_for()
    _no_overflow(page, 390)
    box = page.locator("#viewer").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.keyboard.press("Escape")
    assert page.is_hidden("#viewer")
    assert watch.errors == []
    context.close()


# ---------------------------------------------------------------- 3 and 5. progress, model, agent steps


def test_status_while_waiting_model_and_agent_steps(chromium, site: LiveServer, databricks: DatabricksStub) -> None:
    from playwright.sync_api import expect

    context, page, watch = _page(chromium, site)
    databricks.enqueue(Reply(ANSWER, chunk_size=6, delay=1.5))
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    status = page.locator(".msg.assistant .status")
    expect(status).to_contain_text("Searching the documents", timeout=1000)
    expect(status).to_contain_text("Writing the answer", timeout=10_000)
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for()
    answer = page.locator(".msg.assistant").last
    assert answer.locator(".status").count() == 0
    assert answer.locator(".meta").inner_text() == "Answered by kb-rag"

    page.select_option("#model", "kb-agent")
    page.click("#new-chat")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    expect(page.locator(".msg.assistant .status")).to_contain_text("searching and reading", timeout=2000)
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for()
    answer = page.locator(".msg.assistant").last
    assert answer.locator(".meta").inner_text() == "Answered by kb-agent"
    assert "search_knowledge" in answer.locator(".steps").inner_text()
    citation = answer.locator("button.cite[data-n='1']").first
    assert citation.is_enabled() and "hr/pto.md" in citation.get_attribute("title")
    citation.click()
    assert page.inner_text("#viewer-source") == "hr/pto.md"
    assert watch.errors == []
    context.close()


# ---------------------------------------------------------------- 4. conversations kept


def test_conversations_survive_reload(chromium, site: LiveServer, databricks: DatabricksStub) -> None:
    context, page, watch = _page(chromium, site)
    _ask(page, "How many vacation days do I get?")
    _ask(page, "And how many carry over?")
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    _ask(page, "Who approves expenses over 800 euros?")
    items = page.locator("#history-list li")
    assert items.count() == 2
    assert items.first.locator(".conv-open").inner_text() == "Who approves expenses over 800 euros?"

    page.reload()  # the active conversation comes back, the other one is listed
    page.locator(".msg.user").first.wait_for()
    assert page.locator(".msg.user").all_inner_texts() == ["Who approves expenses over 800 euros?"]
    page.locator("#history-list .conv-open", has_text="How many vacation days").click()
    assert page.locator(".msg.user").all_inner_texts() == ["How many vacation days do I get?", "And how many carry over?"]
    restored = page.locator(".msg.assistant").first
    assert restored.locator(".text strong").count() >= 1 and restored.locator(".meta").inner_text() == "Answered by kb-rag"
    restored.locator("button.cite[data-n='1']").first.click()
    assert page.inner_text("#viewer-source") == "hr/pto.md"
    page.keyboard.press("Escape")

    # A follow-up in the restored conversation carries its history to the server.
    databricks.reset()
    _ask(page, "What about sick leave?")
    sent = json.dumps(databricks.chat_requests())
    assert "And how many carry over?" in sent

    # Rename with the keyboard; delete (confirmed).
    item = page.locator("#history-list li", has=page.locator("[aria-current='true']"))
    item.locator(".conv-rename").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("Vacation questions")
    page.keyboard.press("Enter")
    assert page.locator("#history-list .conv-open[aria-current='true']").inner_text() == "Vacation questions"
    page.reload()
    assert page.locator("#history-list .conv-open[aria-current='true']").inner_text() == "Vacation questions"
    page.locator("#history-list li", has_text="Who approves").locator(".conv-delete").click()
    assert page.locator("#history-list li").count() == 1
    assert any(d.startswith("confirm:") for d in watch.dialogs)
    assert watch.errors == []
    context.close()


# ---------------------------------------------------------------- 6. errors in browser words


def test_errors_in_plain_words(chromium, site: LiveServer, databricks: DatabricksStub) -> None:
    context, page, watch = _page(chromium, site, key=False)
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    page.locator("#key-dialog[open]").wait_for()
    assert page.inner_text("#error-text") == "Enter your API key (ask the person who runs this server)."
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", "not-the-key")
    page.click("#key-save")
    page.locator("#key-dialog[open]").wait_for()
    assert "not accepted" in page.inner_text("#error-text")
    assert "invalid_api_key" not in page.inner_text("#error-text")
    page.fill("#api-key", KEY)
    page.click("#key-save")
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for()

    # The server is busy: 429 with Retry-After.
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "3"}, content_type="application/json",
        body=json.dumps({"error": {"message": "too many requests at work (KB_API_MAX_CONCURRENCY)",
                                   "type": "rate_limit_error", "param": None, "code": "server_busy"}})))
    page.fill("#question", "again?")
    page.press("#question", "Enter")
    page.locator(".msg.assistant").nth(1).locator(".msg-error").wait_for()
    assert page.inner_text("#error-text") == "The server is busy, try again in 3 s."
    page.unroute("**/v1/chat/completions")

    # Databricks fails: a short sentence; the API's text only behind "Details".
    databricks.enqueue(Error(500, "INTERNAL_ERROR", "model crashed"))
    page.fill("#question", "And sick leave?")
    page.press("#question", "Enter")
    failed = page.locator(".msg.assistant").nth(2).locator(".msg-error")
    failed.wait_for()
    sentence = page.inner_text("#error-text")
    assert sentence.startswith("Databricks server error: the language model failed to answer")
    assert "serving endpoint" not in sentence and "INTERNAL_ERROR" not in sentence
    assert "model crashed" not in failed.inner_text()
    assert page.is_hidden("#error-raw")
    page.click("#error-details summary")
    assert "model crashed" in page.inner_text("#error-raw") and "upstream_remote_server" in page.inner_text("#error-raw")
    failed.locator("summary").click()
    assert "model crashed" in failed.inner_text()
    assert watch.errors == []
    context.close()


# ---------------------------------------------------------------- 7. keyboard only


def test_keyboard_only(chromium, site: LiveServer) -> None:
    context, page, watch = _page(chromium, site)
    assert page.evaluate("document.activeElement.id") == "question"
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    page.locator(".msg.assistant:not(.streaming) .sources").wait_for()
    assert page.evaluate("document.activeElement.id") == "question"
    # Tab backwards from the question reaches the last source button, then the citations.
    for _ in range(40):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.classList.contains('cite')"):
            break
    else:
        pytest.fail("no citation reachable with the keyboard")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "focused control has no visible outline"
    page.keyboard.press("Enter")
    page.locator("#viewer:not([hidden])").wait_for()
    assert page.evaluate("document.activeElement.id") == "viewer-title"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "viewer-close"
    page.keyboard.press("Escape")
    assert page.is_hidden("#viewer")
    assert page.evaluate("document.activeElement.classList.contains('cite')")
    # Every control has an accessible name.
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, select, textarea, input')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map(el => el.outerHTML)""")
    assert unnamed == []
    assert watch.errors == []
    context.close()


# ---------------------------------------------------------------- 7 and 8. axe and screenshots


def _axe(page) -> list[str]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
    }""")
    return result


@pytest.mark.parametrize("name,viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_accessibility_and_screenshots(chromium, site: LiveServer, name: str, viewport: dict) -> None:
    # axe is injected as an inline script: the page's CSP would refuse it, so this context bypasses it.
    context, page, watch = _page(chromium, site, viewport, bypass_csp=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[str]] = {}

    def state(label: str) -> None:
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=False)
        found[label] = _axe(page)

    state("1-empty")
    _ask(page)
    state("2-answer")
    page.locator(".msg.assistant button.cite").first.click()
    state("3-citation")
    page.click("#viewer-open")
    page.locator("#viewer-document:not([hidden])").wait_for()
    state("4-document")
    assert {label: v for label, v in found.items() if v} == {}
    assert all(re.match(r"^[\w-]+$", label) for label in found)
    assert watch.errors == []
    context.close()
