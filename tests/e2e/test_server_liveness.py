"""Server liveness (issue 18, Systematic): while one request does the worst work an attacker can
trigger, ``/healthz`` and a second user's request still answer within 1 s.

``kb serve`` runs as a real process (so a server that freezes cannot freeze this test with it) over a
copy of the test index, against the loopback Databricks stub, which scripts kb-agent's tool calls:
the calculator's known attacks (``round(1, -10**18)`` froze the whole server), ``read_document`` on the
largest file it reads, and the longest question the API accepts. The stub holds its answer after the
heavy work for ``HOLD`` seconds, so the probes run while the heavy request is still at work."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.assistant.tools import MAX_DOCUMENT_BYTES
from ingest.sync.records import Records
from tests.conftest import CANARY, kb_command
from tests.databricks_stub import DatabricksStub, Reply
from tests.e2e.serving import free_port, wait_ready

pytestmark = pytest.mark.slow

LIVE = 1.0  # seconds: /healthz and a second user's request must answer within this
HOLD = 1.5  # seconds the stub holds the heavy request's last answer (the probes run meanwhile)
MAX_QUESTION_CHARS = 4000  # the API's default KB_API_MAX_QUESTION_CHARS
SECOND_USER = "How many vacation days do I get? (second user)"
HEAVY_CALCULATIONS = [
    "round(1, -10**18)", "9**9**9", "10**10**10", "2<<10**9", "(10**150)*(10**150)*(10**150)",
    "1e308*1e308", "-" * 299 + "1", "10**299 * 9 + 10**299 // 7",  # the last one is allowed: the largest result
]


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc), [] where that is not available."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(p) for p in task.read_text().split())
        except OSError:
            pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _user_text(body: dict) -> str:
    return " ".join(str(m.get("content") or "") for m in body["messages"] if m.get("role") == "user")


def _respond(body: dict) -> Reply:
    messages = body["messages"]
    text = _user_text(body)
    if "(second user)" in text:
        return Reply("Second user's answer.")
    if body.get("tools"):
        if any(m.get("role") == "tool" for m in messages):
            return Reply("Done.", delay=HOLD)
        if "CALCULATE" in text:
            return Reply("", tool_calls=[{"name": "calculate", "arguments": {"expression": e}, "id": f"call_calc_{i}"}
                                         for i, e in enumerate(HEAVY_CALCULATIONS)])
        if "READ" in text:
            return Reply("", tool_calls=[{"name": "read_document", "arguments": {"source": "huge.md"}, "id": "call_read"}])
    return Reply("The long question's answer.", delay=HOLD)


@pytest.fixture(scope="module")
def server(stub_server: DatabricksStub, built_index: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("liveness")
    index = work / "index"
    shutil.copytree(built_index, index)
    big = work / "big"
    big.mkdir()
    _write_largest_document(big / "huge.md")
    with closing(Records(index)) as records:
        records.put(big.resolve(), "huge.md", "sha-huge", "Huge policy", ["huge-0"])

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DATABRICKS_", "KB_", "BASE_URL", "OPENAI_"))}
    env.update({
        "DATABRICKS_TOKEN": CANARY, "base_url": stub_server.base_url, "KB_INDEX_DIR": str(index),
        "KB_USAGE_LEDGER": str(work / "usage.sqlite"), "KB_MAX_RETRIES": "0", "KB_TIMEOUT": "30",
    })
    port = free_port()
    log = (work / "serve.log").open("w+")
    process = subprocess.Popen(kb_command("serve", "--port", str(port)),
                               cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log)
        yield {"url": url, "pid": process.pid}
    finally:
        workers = [c for c in _children(process.pid) if "calculator.py" in _cmdline(c)]
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a frozen server does not even handle its signals
            process.kill()
            process.wait(timeout=20)
        log.seek(0)
        output = log.read()
        log.close()
        assert CANARY not in output
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "the calculator worker outlived kb serve"


def _write_largest_document(path: Path) -> None:
    """A Markdown policy just under read_document's size limit (headings, paragraphs, lists, code)."""
    paragraph = ("Expense claims over 800 euros need the approval of the department head; receipts are "
                 "kept for ten years and attached to the claim. ") * 5
    blocks, size, n = ["# Huge policy\n\n"], 15, 0
    while True:
        block = f"## Section {n}\n\n{paragraph.strip()}\n\n- first rule\n- second rule with `code`\n\n"
        if size + len(block) > MAX_DOCUMENT_BYTES - 512:
            break
        blocks.append(block)
        size += len(block)
        n += 1
    path.write_text("".join(blocks), encoding="utf-8")
    assert MAX_DOCUMENT_BYTES - 1024 < path.stat().st_size <= MAX_DOCUMENT_BYTES


@pytest.fixture
def stub(stub_server: DatabricksStub) -> DatabricksStub:
    stub_server.reset()
    saved, stub_server.default_responder = stub_server.default_responder, _respond
    yield stub_server
    stub_server.default_responder = saved


def _chat(model: str, question: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}]}


def _while_heavy(url: str, heavy: dict[str, Any]) -> tuple[httpx.Response, list[tuple[str, float]]]:
    """Send the heavy request; while it is at work, time /healthz and a second user's kb-rag question."""
    result: dict[str, Any] = {}

    def send() -> None:
        try:
            with httpx.Client(timeout=60) as client:
                result["response"] = client.post(url + "/v1/chat/completions", json=heavy)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    timings: list[tuple[str, float]] = []
    with httpx.Client(timeout=10) as probe:
        time.sleep(0.2)  # let the heavy request reach its work
        while thread.is_alive() or len(timings) < 4:
            for name, call in (
                ("/healthz", lambda: probe.get(url + "/healthz")),
                ("second user", lambda: probe.post(url + "/v1/chat/completions", json=_chat("kb-rag", SECOND_USER))),
            ):
                started = time.monotonic()
                try:
                    response = call()
                except httpx.HTTPError as exc:
                    pytest.fail(f"{name} did not answer while the heavy request ran: {type(exc).__name__}")
                timings.append((name, time.monotonic() - started))
                assert response.status_code == 200, (name, response.text[:500])
            time.sleep(0.05)
    thread.join(30)
    assert "response" in result, f"the heavy request failed: {result.get('error')!r}"
    return result["response"], timings


def _assert_live(timings: list[tuple[str, float]]) -> None:
    slow = [(name, round(seconds, 2)) for name, seconds in timings if seconds >= LIVE]
    assert not slow, f"answers slower than {LIVE} s while the heavy request ran: {slow}"
    assert {name for name, _ in timings} == {"/healthz", "second user"}


def _warm(url: str) -> None:
    """First requests load the query embedding model and build the agent: not what is measured."""
    with httpx.Client(timeout=120) as client:
        assert client.post(url + "/v1/chat/completions", json=_chat("kb-rag", SECOND_USER)).status_code == 200


def test_heaviest_calculations_do_not_stop_the_server(server: dict[str, Any], stub: DatabricksStub) -> None:
    _warm(server["url"])
    response, timings = _while_heavy(server["url"], _chat("kb-agent", "CALCULATE the worst you can"))
    _assert_live(timings)
    assert response.status_code == 200, response.text[:1000]
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Done."
    steps = {s["id"]: s for s in body["steps"]}
    assert len(steps) == len(HEAVY_CALCULATIONS)
    assert steps["call_calc_0"]["error"] is True and "number of digits" in steps["call_calc_0"]["summary"]
    assert all(steps[f"call_calc_{i}"]["error"] for i in range(len(HEAVY_CALCULATIONS) - 1))
    assert steps[f"call_calc_{len(HEAVY_CALCULATIONS) - 1}"]["error"] is False
    # the refusals went back to the model as tool results it can act on
    followup = [b for b in stub.chat_requests() if any(m.get("role") == "tool" for m in b["messages"])]
    tool_results = {m["tool_call_id"]: m["content"] for m in followup[-1]["messages"] if m.get("role") == "tool"}
    assert tool_results["call_calc_0"].startswith("error: round(): the number of digits must be between")
    # one calculator worker, started lazily, shared by the calls
    workers = [c for c in _children(server["pid"]) if "calculator.py" in _cmdline(c)]
    if Path("/proc").is_dir():
        assert len(workers) == 1


def test_reading_the_largest_document_does_not_stop_the_server(server: dict[str, Any], stub: DatabricksStub) -> None:
    _warm(server["url"])
    response, timings = _while_heavy(server["url"], _chat("kb-agent", "READ the huge policy"))
    _assert_live(timings)
    assert response.status_code == 200, response.text[:1000]
    [step] = response.json()["steps"]
    assert step["tool"] == "read_document" and step["error"] is False, step
    followup = [b for b in stub.chat_requests() if any(m.get("role") == "tool" for m in b["messages"])]
    [content] = [m["content"] for m in followup[-1]["messages"] if m.get("role") == "tool"]
    assert "Expense claims over 800 euros" in content and "read_document again with start=" in content


def test_the_longest_question_does_not_stop_the_server(server: dict[str, Any], stub: DatabricksStub) -> None:
    _warm(server["url"])
    words = "vacation days carry over approval expenses receipts "
    question = (words * (MAX_QUESTION_CHARS // len(words) + 1))[:MAX_QUESTION_CHARS]
    for model in ("kb-rag", "kb-agent"):
        response, timings = _while_heavy(server["url"], _chat(model, question))
        _assert_live(timings)
        assert response.status_code == 200, response.text[:1000]
    too_long = httpx.post(server["url"] + "/v1/chat/completions", json=_chat("kb-rag", question + "x"), timeout=30)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "question_too_long"
