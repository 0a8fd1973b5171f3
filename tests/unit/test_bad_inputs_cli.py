"""Bad input on the command line gives one clear ``error:`` line and a non-zero exit, never a
traceback (issue 18, item 11): ``kb usage --since`` far out of range, gold files with deeply nested
or oversized JSON, and the judge-reply parser fed adversarial text."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.evaluation.evaluate import load_gold, parse_judgement, too_deep
from agent.errors import UsageError
from tests.conftest import KbRunner


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("since", ["99999999999d", "99999999999w", "9" * 5000 + "m", "0001-01-01", "0001-01-01T00:00:00+14:00"])
def test_usage_since_out_of_range_is_one_line(env: Path, since: str, kb: KbRunner) -> None:
    line = one_error_line(kb("usage", "--since", since))
    assert "--since" in line and ("too far back" in line or "invalid" in line)
    assert len(line) < 300  # a 5,000-digit argument is not echoed whole


@pytest.mark.parametrize("since", ["7d", "2w", "all", "2025-01-31"])
def test_usage_since_in_range_still_works(env: Path, since: str, kb: KbRunner) -> None:
    result = kb("usage", "--since", since, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["groups"] == []


def _gold(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"id": "q1", "question": "How many vacation days?", "sources": ["hr/pto.md"]})


@pytest.mark.parametrize("line", [
    "[" * 100_000,
    "{\"a\":" * 100_000 + "1" + "}" * 100_000,
    json.dumps({"id": "q2", "question": "deep", "sources": [], "extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
])
def test_deeply_nested_gold_line_is_one_line(env: Path, tmp_path: Path, line: str, kb: KbRunner) -> None:
    error = one_error_line(kb("eval", str(_gold(tmp_path, GOOD, line))))
    assert "line 2" in error and "nested" in error


def test_brackets_inside_strings_are_not_nesting(tmp_path: Path) -> None:
    question = "what do [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ and {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{ \\\" [[[[ mean?"
    line = json.dumps({"id": "q2", "question": question, "sources": []})
    questions = load_gold(_gold(tmp_path, GOOD, line))
    assert questions[1].question == question
    assert not too_deep(line, 32) and too_deep("[" * 33, 32) and not too_deep("[" * 32 + "]" * 32, 32)


def test_oversized_gold_line_and_folder_are_one_line(env: Path, tmp_path: Path, kb: KbRunner) -> None:
    huge = json.dumps({"id": "big", "question": "x" * (2 * 1024 * 1024), "sources": []})
    assert "longer than" in one_error_line(kb("eval", str(_gold(tmp_path, GOOD, huge))))
    assert "folder" in one_error_line(kb("eval", str(tmp_path)))


def test_gold_from_an_endless_file_is_bounded() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(UsageError, match="larger than"):
        load_gold(Path("/dev/zero"))


def test_judge_reply_parsing_is_linear_and_safe() -> None:
    assert parse_judgement('Sure: ```json\n{"verdict": "correct", "grounded": true}\n``` done') == {
        "verdict": "correct", "grounded": True}
    assert parse_judgement("} no object {") is None
    results: list = []
    worker = threading.Thread(target=lambda: results.extend(
        [parse_judgement("{" * 200_000), parse_judgement("[" * 200_000 + "{}"), parse_judgement("{" + "[" * 200_000 + "}")]))
    worker.start()
    worker.join(timeout=30)  # a generous liveness bound; the quadratic search took minutes
    assert not worker.is_alive() and results == [None, {}, None]
