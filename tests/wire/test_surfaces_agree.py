"""The same question through every surface gives the same answer: ``kb ask``, ``kb chat``, the API's
kb-rag (streamed and not) and ``/api/ask``, and ``kb eval --answers`` all run the one answer
pipeline (``agent.rag.service``), so text, sources, refusal and usage totals agree; for an on-topic
question, an off-topic one (declined everywhere, ``kb chat`` included), a follow-up with history
(the rewrite's tokens counted everywhere, also when it then declines) and a cut stream. On the wire:
the loopback Databricks server and the shared test index."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langgraph.checkpoint.memory import InMemorySaver

from agent.api import create_app
from agent.api.schemas import openai_usage
from agent.rag.conversation import build_chat, run_chat_turn
from agent.evaluation.evaluate import GoldQuestion, evaluate_answers
from agent.rag.prompts import CONDENSE_SYSTEM, JUDGE_ANSWER_SYSTEM, JUDGE_DECLINE_SYSTEM
from agent.settings import load_settings
from tests.databricks_stub import DatabricksStub, Reply

ON_TOPIC = "How many vacation days do I get?"
OFF_TOPIC = "Which grand prix did the 1971 Tyrrell car win?"
ANSWER = "Full-time employees get 23 vacation days per year [1]."
REWRITE = "How many vacation days carry over to the next year?"
FOLLOW_UP = "and how many carry over?"
ANSWER_USAGE = {"prompt_tokens": 600, "completion_tokens": 14}
REWRITE_USAGE = {"prompt_tokens": 30, "completion_tokens": 6}
JUDGE_USAGE = {"prompt_tokens": 50, "completion_tokens": 5}
VERDICT = json.dumps({"verdict": "correct", "grounded": True, "declined": False, "reason": "ok"})


def is_judge(system: str) -> bool:
    return any(system.startswith(prompt[:60]) for prompt in (JUDGE_ANSWER_SYSTEM, JUDGE_DECLINE_SYSTEM))


def respond(body: dict) -> Reply:
    """One deterministic server: every surface gets the same reply to the same request."""
    system = body["messages"][0]["content"]
    if system == CONDENSE_SYSTEM:
        last = body["messages"][-1]["content"]
        return Reply("Tyrrell 1971 grand prix wins" if "grand prix" in last else REWRITE, usage=REWRITE_USAGE)
    if is_judge(system):
        return Reply(VERDICT, usage=JUDGE_USAGE)
    return Reply(ANSWER, usage=ANSWER_USAGE)


@pytest.fixture
def server(indexed: Path, databricks: DatabricksStub, stub_server: DatabricksStub):
    saved = stub_server.default_responder
    databricks.default_responder = respond
    with ExitStack() as stack:
        client = stack.enter_context(TestClient(create_app(load_settings()), base_url="http://localhost"))
        yield client
    stub_server.default_responder = saved


def totals(usage: dict[str, int]) -> dict[str, Any]:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "reported": True}


def plus(*usages: dict[str, int]) -> dict[str, int]:
    return {key: sum(u[key] for u in usages) for key in ("prompt_tokens", "completion_tokens")}


def completion(client: TestClient, messages: list[dict[str, str]], *, stream: bool = False) -> dict[str, Any]:
    """kb-rag's answer as (text, sources without passage text, usage), streamed or not."""
    response = client.post("/v1/chat/completions", json={"model": "kb-rag", "messages": messages, "stream": stream})
    assert response.status_code == 200, response.text
    if not stream:
        body = response.json()
        text, sources, usage = body["choices"][0]["message"]["content"], body["sources"], body["usage"]
    else:
        events = [json.loads(b[6:]) for b in response.text.split("\n\n") if b.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        sources, usage = events[-1]["sources"], events[-1]["usage"]
    return {"text": text, "sources": [{k: v for k, v in s.items() if k not in ("text", "score")} for s in sources],
            "usage": usage}


def chat_turns(*questions: str) -> list[Any]:
    chat = build_chat(load_settings(), checkpointer=InMemorySaver())
    return [run_chat_turn(chat, q, thread_id="t") for q in questions]


def test_an_on_topic_question_gets_the_same_answer_everywhere(server: TestClient, databricks: DatabricksStub, kb) -> None:
    cli = kb("ask", ON_TOPIC, "--json")
    assert cli.exit_code == 0, cli.stderr
    asked = json.loads(cli.stdout)
    assert asked["answer"] == ANSWER and asked["sources"][0]["source"] == "hr/pto.md"
    assert asked["usage"] == totals(ANSWER_USAGE) and "refused" not in asked

    assert server.post("/api/ask", json={"question": ON_TOPIC}).json() == asked
    (turn,) = chat_turns(ON_TOPIC)
    assert (turn.text, turn.sources, turn.usage, turn.refused) == (ANSWER, asked["sources"], asked["usage"], False)
    for stream in (False, True):
        api = completion(server, [{"role": "user", "content": ON_TOPIC}], stream=stream)
        assert api == {"text": ANSWER, "sources": asked["sources"], "usage": openai_usage(asked["usage"])}

    gold = GoldQuestion(id="pto", question=ON_TOPIC, sources=("hr/pto.md",), answer="23 days")
    report = evaluate_answers(load_settings(), [gold], mode=load_settings().search_mode)
    [row] = report["questions"]
    assert (row["answer"], row["cited"], row["refused"]) == (ANSWER, asked["sources"], False)
    assert report["usage"] == totals(plus(ANSWER_USAGE, JUDGE_USAGE))  # the answer and the judge call
    # every surface sent the model the same answer request
    answers = [b["messages"] for b in databricks.chat_requests() if not is_judge(b["messages"][0]["content"])]
    assert len(answers) == 6 and all(m == answers[0] for m in answers)


def test_an_off_topic_question_is_declined_everywhere(server: TestClient, databricks: DatabricksStub, kb) -> None:
    asked = json.loads(kb("ask", OFF_TOPIC, "--json").stdout)
    assert asked["refused"] is True and "does not cover" in asked["answer"] and asked["sources"] == []
    assert server.post("/api/ask", json={"question": OFF_TOPIC}).json() == asked
    for stream in (False, True):
        api = completion(server, [{"role": "user", "content": OFF_TOPIC}], stream=stream)
        assert api == {"text": asked["answer"], "sources": [], "usage": openai_usage(asked["usage"])}
    (turn,) = chat_turns(OFF_TOPIC)
    assert turn.refused and turn.text == asked["answer"] and turn.usage == asked["usage"]
    repl = kb("chat", input=OFF_TOPIC + "\n")  # the drift bug: kb chat used to answer anyway
    assert repl.exit_code == 0 and asked["answer"] in repl.stdout
    gold = GoldQuestion(id="f1", question=OFF_TOPIC, sources=())
    [row] = evaluate_answers(load_settings(), [gold], mode=load_settings().search_mode)["questions"]
    assert row["refused"] is True and row["answer"] == asked["answer"] and row["declined"] is True
    assert databricks.chat_requests() == []  # nobody called the model


def test_a_follow_up_is_condensed_and_counted_the_same_in_chat_and_the_api(server: TestClient,
                                                                          databricks: DatabricksStub) -> None:
    first, second = chat_turns(ON_TOPIC, FOLLOW_UP)
    assert first.text == ANSWER and second.standalone == REWRITE
    chat_requests = databricks.chat_requests()[1:]
    databricks.reset()
    history = [{"role": "user", "content": ON_TOPIC}, {"role": "assistant", "content": ANSWER},
               {"role": "user", "content": FOLLOW_UP}]
    api = completion(server, history)
    assert api == {"text": second.text, "sources": second.sources, "usage": openai_usage(second.usage)}
    assert second.usage == totals(plus(REWRITE_USAGE, ANSWER_USAGE))
    api_requests = databricks.chat_requests()
    assert [r["messages"] for r in api_requests] == [r["messages"] for r in chat_requests]  # rewrite, answer


def test_a_follow_up_rewritten_then_declined_still_counts_the_rewrite(server: TestClient, databricks: DatabricksStub,
                                                                     kb) -> None:
    """The drift bug: kb-rag reported zero usage when it declined after rewriting a follow-up."""
    _, declined = chat_turns(ON_TOPIC, "and the " + OFF_TOPIC[0].lower() + OFF_TOPIC[1:])
    assert declined.refused and declined.usage == totals(REWRITE_USAGE)
    history = [{"role": "user", "content": ON_TOPIC}, {"role": "assistant", "content": ANSWER},
               {"role": "user", "content": "and the " + OFF_TOPIC[0].lower() + OFF_TOPIC[1:]}]
    for stream in (False, True):
        api = completion(server, history, stream=stream)
        assert api == {"text": declined.text, "sources": [], "usage": openai_usage(totals(REWRITE_USAGE))}
    repl = kb("chat", input=f"{ON_TOPIC}\nand the {OFF_TOPIC[0].lower() + OFF_TOPIC[1:]}\n")
    assert repl.exit_code == 0 and "does not cover" in repl.stdout


def test_a_cut_stream_keeps_the_same_partial_text_everywhere(server: TestClient, databricks: DatabricksStub,
                                                             monkeypatch: pytest.MonkeyPatch, kb) -> None:
    monkeypatch.setenv("KB_MAX_RETRIES", "0")
    cut = Reply(ANSWER, chunk_size=5, drop_after_chunks=4)
    databricks.default_responder = lambda body: cut
    asked = kb("ask", ON_TOPIC, "--json")
    assert asked.exit_code == 4 and "incomplete" in asked.stderr
    data = json.loads(asked.stdout)
    assert data["partial"] is True and data["answer"] and ANSWER.startswith(data["answer"]) and "cut off" in data["error"]
    repl = kb("chat", input=ON_TOPIC + "\n")
    assert repl.exit_code == 4 and repl.stdout.startswith(data["answer"]) and "incomplete" in repl.stderr
    response = server.post("/v1/chat/completions", json={"model": "kb-rag", "stream": True,
                                                        "messages": [{"role": "user", "content": ON_TOPIC}]})
    events = [json.loads(b[6:]) for b in response.text.split("\n\n") if b.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text == data["answer"] and "cut off" in events[-1]["error"]["message"]
