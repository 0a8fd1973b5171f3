"""Logging: --log-json lines, --verbose, and secrets masked everywhere in a record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from agent.observability.logs import MASK, JsonFormatter, RedactSecrets, configure_logging, redact, register_secret
from agent.settings import load_settings
from tests.conftest import CANARY
from tests.databricks_stub import DatabricksStub, Reply

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _format(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> str:
    assert RedactSecrets().filter(record)
    return (formatter or logging.Formatter("%(message)s")).format(record)


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_registered_token_and_token_shapes_are_masked_everywhere(env: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY)
    load_settings()  # loading settings registers the token
    text = _format(_record("token %s in args, header %r", CANARY, {"Authorization": f"Bearer {CANARY}"}))
    assert CANARY not in text and text.count(MASK) == 2
    assert redact("another dapi0123456789abcdef0123 here") == f"another {MASK} here"
    assert redact("Authorization: Bearer sk-live-xyz") == f"Authorization: Bearer {MASK}"
    try:
        raise RuntimeError(f"request failed with key {CANARY}")
    except RuntimeError:
        import sys

        exc_record = _record("boom", exc_info=sys.exc_info())
    formatted = _format(exc_record)
    assert "RuntimeError" in formatted and CANARY not in formatted
    structured = _format(_record("x", headers={"authorization": f"Bearer {CANARY}"}), JsonFormatter())
    assert CANARY not in structured and json.loads(structured)["headers"]["authorization"] == f"Bearer {MASK}"


def test_a_token_not_shaped_like_dapi_is_masked_once_registered() -> None:
    register_secret("opaque-service-secret-4242")
    assert redact("x opaque-service-secret-4242 y") == f"x {MASK} y"


def test_api_keys_are_masked_once_settings_load(env: Path, monkeypatch) -> None:
    monkeypatch.setenv("KB_API_KEYS", "bot:apikey-zx81-secret-value")
    load_settings()
    assert _format(_record("caller sent %s", "apikey-zx81-secret-value")) == f"caller sent {MASK}"


def test_json_lines_with_structured_fields(capsys) -> None:
    configure_logging(verbose=True, json_format=True)
    logging.getLogger("kb.test").info("hello %s", "world", extra={"endpoint": "e1", "prompt_tokens": 3})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    data = json.loads(line)
    assert (data["level"], data["logger"], data["message"]) == ("info", "kb.test", "hello world")
    assert (data["endpoint"], data["prompt_tokens"]) == ("e1", 3)
    assert data["ts"].endswith("+00:00")


def test_default_level_hides_info_but_not_warnings(capsys) -> None:
    configure_logging()
    logging.getLogger("kb.test").info("quiet please")
    logging.getLogger("kb.test").warning(f"careful with {CANARY}")
    err = capsys.readouterr().err
    assert "quiet please" not in err and "careful with" in err and CANARY not in err


def test_cli_log_json_verbose_model_call_line(indexed: Path, databricks: DatabricksStub) -> None:
    databricks.enqueue(Reply("You get 23 vacation days [1].", usage={"prompt_tokens": 40, "completion_tokens": 8}))
    result = runner.invoke(app, ["--verbose", "--log-json", "ask", "How many vacation days do I get?"])
    assert result.exit_code == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert events, result.stderr
    [call] = [e for e in events if e.get("event") == "model_call"]
    assert (call["kind"], call["command"], call["prompt_tokens"], call["completion_tokens"], call["status"]) == (
        "chat", "ask", 40, 8, "ok")
    assert call["endpoint"] == "databricks-meta-llama-3-3-70b-instruct" and call["latency_ms"] >= 0
    http = [e for e in events if e["logger"].startswith("httpx")]  # the HTTP client logs each request
    assert http and all(CANARY not in json.dumps(e) for e in http)
