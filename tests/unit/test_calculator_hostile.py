"""The calculator against hostile expressions (issue 18, item 1): every operation is bounded before it
runs, the tool evaluates in a worker process killed at its time limit, and that worker never outlives kb.

Attacks go through a worker process (``Calculator``), never in the test process: an expression that
slipped past the bounds would then fail the test at the time limit instead of freezing the test run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.assistant.calculator import (
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_NODES,
    CalculationError,
    Calculator,
    calculate_expression,
    format_number,
)

REPO = Path(__file__).resolve().parents[2]
BUDGET = 2.0  # seconds an attack may take to be refused or answered

ATTACKS = [
    # (expression, what the refusal says)
    ("round(1, -10**18)", "number of digits must be between"),
    ("round(1.5, 10**18)", "number of digits must be between"),
    ("round(10**299, -301)", "number of digits must be between"),
    ("9**9**9", "exponent is too large"),
    ("9**9**9**9", "exponent is too large"),
    ("10**10**10", "exponent is too large"),
    ("2**10000", "more than 300 digits"),
    ("1.0000001**9999", None),  # fine: a float answer
    ("0.5 ** -2000", "more than 300 digits"),
    ("(-2) ** 0.5", "not a real number"),
    ("2 ** 1e300", "exponent is too large"),
    ("2<<10**9", "'<<' is not allowed"),
    ("1 >> 10**9", "'>>' is not allowed"),
    ("~10**9", "'~' is not allowed"),
    ("(10**5000)*(10**5000)", "exponent|more than 300 digits"),
    ("(10**150)*(10**150)*(10**150)*(10**150)", "more than 300 digits"),
    ("(10**299)*(10**299)", "more than 300 digits"),
    ("(10**200)*(10**200)", "more than 300 digits"),
    ("-" * 299 + "1", f"more than {MAX_DEPTH} levels"),
    ("(" * 100 + "1" + ")" * 100, None),  # parentheses alone add no nesting: answered
    ("(-" * 70 + "1" + ")" * 70, None),  # 70 levels: answered
    ("- " * 149 + "1", f"more than {MAX_DEPTH} levels"),
    ("+".join(["1"] * 150), f"more than {MAX_DEPTH} levels"),  # a left-leaning tree 150 deep
    ("2**" * 99 + "2", f"more than {MAX_DEPTH} levels|exponent is too large"),
    ("1e308*1e308", "not finite"),
    ("1e309", "not finite"),
    ("10.0**400", "more than 300 digits"),
    ("0x" + "f" * 298, "more than 300 digits"),
    ("9" * 301, "more than 300 digits|longer than"),
    ("9" * 10_000, "longer than"),
    ("'a' * 10**9", "only numbers"),
    ("[1] * 10**9", "not allowed"),
    ("max(range(10**12))", "not allowed"),
    ("min(*[1] * 10**9)", "not allowed"),
    ("sqrt(-1)", "sqrt"),
    ("1j ** 1j", "only numbers"),
    ("__import__('os').system('sleep 100')", "not allowed"),
    ("abs(" * 50 + "1" + ")" * 50, None),
]


@pytest.fixture(scope="module")
def calc():
    calculator = Calculator()
    calculator.evaluate("1 + 1")  # started: the budget below is per calculation, not per process start
    yield calculator
    calculator.close()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (Linux ``/proc``; elsewhere ``kill(pid, 0)``)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- known attacks


@pytest.mark.parametrize("expression, refusal", ATTACKS, ids=[a[0][:40] for a in ATTACKS])
def test_known_attacks_are_refused_by_the_bounds_fast(calc: Calculator, expression: str, refusal: str | None) -> None:
    pid = calc.pid
    started = time.monotonic()
    if refusal is None:
        assert math.isfinite(calc.evaluate(expression))
    else:
        with pytest.raises(CalculationError, match=refusal) as caught:
            calc.evaluate(expression)
        # refused by a bound, not by the time limit killing the worker
        assert "took longer" not in str(caught.value)
    assert time.monotonic() - started < BUDGET
    assert calc.pid == pid  # the worker survived and is reused


def test_the_freezing_round_is_refused_by_the_tool_in_a_fresh_process(tmp_path: Path) -> None:
    """The reported attack, end to end through the tool: it used to compute 10**(10**18) for ever
    (this test then failed on its timeout instead of hanging the test run)."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from agent.assistant.tools import KnowledgeBase, build_tools
        tools = {{t.name: t for t in build_tools(KnowledgeBase(None, Path({str(tmp_path)!r})))}}
        for expression in ("round(1, -10**18)", "round(2.567, 2)"):
            message = tools["calculate"].invoke(
                {{"type": "tool_call", "id": "c1", "name": "calculate", "args": {{"expression": expression}}}})
            print(message.status, message.content, sep="|")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    refused, fine = result.stdout.strip().splitlines()
    assert refused.startswith("error|error: round(): the number of digits must be between -300 and 300")
    assert fine == "success|2.57"


def test_trees_with_too_many_parts_are_refused_before_evaluation() -> None:
    """The node limit backs the length limit up: a balanced tree, shallow but wide, built past the length limit."""
    import ast

    from agent.assistant.calculator import _check_shape

    text = "1"
    while text.count("1") <= MAX_NODES:
        text = f"({text} + {text})"
    with pytest.raises(CalculationError, match=f"more than {MAX_NODES} parts"):
        _check_shape(ast.parse(text, mode="eval").body)
    _check_shape(ast.parse("+".join(["1"] * 100), mode="eval").body)  # a sum of 100 terms is fine


def test_existing_answers_are_unchanged(calc: Calculator) -> None:
    for expression, expected in [("1 + 2 * 3", 7), ("(23 - 4) * 1.5", 28.5), ("2 ** 10", 1024), ("2 ** -2", 0.25),
                                 ("round(1234.5678, -2)", 1200.0), ("round(7, -1)", 10), ("10**299 * 9", 9 * 10**299),
                                 ("max(1, 2.5, -3)", 2.5), ("sqrt(2) ** 2", 2.0000000000000004), ("(-8) ** 2.0", 64.0)]:
        assert calc.evaluate(expression) == expected == calculate_expression(expression)
    assert format_number(calc.evaluate("0.1 + 0.2")) == "0.3"


# ---------------------------------------------------------------- the worker process


def _hanging_worker() -> list[str]:
    """A worker that says it is ready, then spins on the CPU for ever on its first request."""
    return [sys.executable, "-c",
            "import sys; print('{\"ready\": true}', flush=True); sys.stdin.readline()\nwhile True: pass"]


def test_a_calculation_past_the_time_limit_is_killed_and_others_keep_running() -> None:
    calculator = Calculator(time_limit=0.5, command=_hanging_worker())
    calculator.start()
    pid = calculator.pid
    assert pid is not None
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        with pytest.raises(CalculationError, match=r"took longer than 0.5 s and was stopped"):
            calculator.evaluate("1 + 1")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        ticker.join()
        calculator.close()
    assert 0.4 < elapsed < BUDGET
    assert ticks >= 10  # this process's other threads ran meanwhile (no GIL held)
    assert calculator.pid is None and _wait_gone(pid)  # killed, not left spinning


def test_a_dead_worker_is_replaced_on_the_next_call() -> None:
    calculator = Calculator()
    try:
        assert calculator.evaluate("6 * 7") == 42
        first = calculator.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert _wait_gone(first)
        assert calculator.evaluate("6 * 7") == 42  # a new worker, started for this call
        assert calculator.pid not in (None, first)
    finally:
        pid = calculator.pid
        calculator.close()
        assert pid is None or _wait_gone(pid)


def test_parallel_calls_share_one_worker_and_each_get_their_answer(calc: Calculator) -> None:
    pid = calc.pid
    answers: dict[int, object] = {}

    def work(n: int) -> None:
        try:
            answers[n] = calc.evaluate(f"{n} * {n} + round(1, -10**{n + 3})")
        except CalculationError as exc:
            answers[n] = str(exc)
        answers[-n - 1] = calc.evaluate(f"{n} ** 2")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all("number of digits" in str(answers[n]) for n in range(8))
    assert [answers[-n - 1] for n in range(8)] == [n * n for n in range(8)]
    assert calc.pid == pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="checks process states through /proc")
@pytest.mark.parametrize("how", ["killed", "exits"])
def test_the_worker_never_outlives_its_parent(how: str) -> None:
    """The parent is SIGKILLed (no atexit) or exits normally: its worker goes away either way."""
    script = textwrap.dedent(f"""
        import os, sys
        from agent.assistant.calculator import calculate, default_calculator
        assert calculate("2 + 2") == 4
        print(default_calculator().pid, flush=True)
        sys.stdin.readline()  # wait here to be killed, or for the end of input to exit normally
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        if how == "killed":
            parent.kill()
        else:
            parent.stdin.close()
        assert parent.wait(30) == (-signal.SIGKILL if how == "killed" else 0)
        assert _wait_gone(worker), "the calculator worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_the_worker_gets_no_secrets_and_no_site_packages(calc: Calculator) -> None:
    pid = calc.pid
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ")
    if environ.exists():
        assert environ.read_bytes() == b""  # an empty environment: no DATABRICKS_TOKEN, no KB_API_KEYS
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        args = cmdline.read_bytes().split(b"\0")
        assert b"-I" in args and b"-S" in args


# ---------------------------------------------------------------- properties

NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(0, 320).map(lambda n: f"10**{n}"),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300).map(repr),
    st.sampled_from(["0", "1", "-1", "0.5", "9**9", "1e308", "2**999", "10**18", "0.0"]),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})")
    unary = st.tuples(st.sampled_from(["-", "+"]), children).map(lambda t: f"{t[0]}({t[1]})")
    calls = st.tuples(st.sampled_from(["abs", "sqrt", "min", "max", "round"]),
                      st.lists(children, min_size=1, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})")
    rounding = st.tuples(children, st.integers(-10**20, 10**20)).map(lambda t: f"round({t[0]}, {t[1]})")
    return st.one_of(binary, unary, calls, rounding)


EXPRESSIONS = st.recursive(NUMBERS, _combine, max_leaves=12)
FUNCTIONS = {"abs": abs, "sqrt": math.sqrt, "min": min, "max": max, "round": round, "__builtins__": {}}


@settings(max_examples=300, deadline=int(BUDGET * 1000), suppress_health_check=[HealthCheck.too_slow])
@given(expression=EXPRESSIONS)
def test_generated_arithmetic_is_answered_exactly_or_refused_in_time(calc: Calculator, expression: str) -> None:
    try:
        value = calc.evaluate(expression)  # killed at the time limit if a bound is missing
    except CalculationError as exc:
        message = str(exc)
        assert "took longer" not in message and "cannot calculate this" not in message, (expression, message)
        return
    # Answered: every step was bounded, so Python computes the same steps just as fast.
    assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    assert not isinstance(value, int) or abs(value) < 10**300
    assert calculate_expression(expression) == value
    expected = eval(expression, dict(FUNCTIONS))  # noqa: S307 - the oracle, on an expression known to be bounded
    assert value == expected and type(value) is type(expected), expression


@settings(max_examples=100, deadline=int(BUDGET * 1000))
@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=2 * MAX_EXPRESSION_CHARS),
       form=st.sampled_from(["{}", "0x{}", "{}e{}", "{}.{}", "{} ** {}", "round({}, -{})"]))
def test_literals_of_any_length_are_refused_or_exact(calc: Calculator, digits: str, form: str) -> None:
    expression = form.replace("{}", digits)
    try:
        value = calc.evaluate(expression)
    except CalculationError as exc:
        assert "took longer" not in str(exc) and "cannot calculate this" not in str(exc), expression
        return
    assert len(expression) <= MAX_EXPRESSION_CHARS
    assert value == eval(expression, dict(FUNCTIONS))  # noqa: S307 - bounded, see above
