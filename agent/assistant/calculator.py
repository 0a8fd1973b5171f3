"""Bounded arithmetic for the assistant's ``calculate`` tool, evaluated in a worker process.

Untrusted text (a model's tool call, which a planted document can steer) reaches the calculator, and
Python's integers are unbounded: ``round(1, -10**18)`` computes ``10**(10**18)`` inside one C call that
holds the GIL for ever, so a thread cannot be stopped and every other thread of ``kb serve`` (even
``/healthz``) froze. Two layers, each sufficient for the attacks known so far:

1. **Every operation is bounded before it runs** (``calculate_expression``, pure, in-process): the
   expression's length (``MAX_EXPRESSION_CHARS``), its syntax tree's node count and depth, literals and
   every intermediate result (at most ``MAX_RESULT_DIGITS`` digits, floats finite), the size of a power
   estimated from ``exponent * log10(|base|)`` (ints and floats, any sign) and its exponent
   (``MAX_EXPONENT``), the size of a product from the operands' bit lengths, and ``round``'s digits
   (``|ndigits| <= MAX_RESULT_DIGITS``). Shifts, bit operations, names, attributes, strings, and calls
   other than ``abs round min max sqrt`` are refused. With every operand under ~1,000 bits, no
   operation costs more than microseconds.
2. **The tool evaluates in a worker process with a hard time limit** (``Calculator``, ``calculate``):
   if a calculation is not answered within ``TIME_LIMIT`` seconds the worker is killed (and a fresh one
   started on the next call), so an overlooked operation costs one refusal, never a frozen server.
   The worker is one long-lived process reused across calls (a call costs a pipe round trip, not a
   process start), started lazily on the first calculation, one call at a time (a lock; waiting on it
   releases the GIL). It is this file run as a script by ``subprocess`` with ``python -I -S`` and an
   empty environment: only the standard library, no secrets, no site-packages, nothing of kb imported.
   ``multiprocessing``'s spawn context would re-import the parent's ``__main__`` (all of kb's CLI and
   its heavy dependencies) in the child and pickle calls; ``fork`` is unsafe in the threaded server;
   ``subprocess`` execs at once, so it is as safe as spawn and starts in a few tens of milliseconds.
   It cannot outlive kb: idle, it reads its requests from a pipe and exits at end of file (the parent
   died or closed it); busy, ``SIGALRM`` at its default action ends it after ``WORKER_ALARM_SECONDS``
   even inside a C call; an address-space limit (``WORKER_MEMORY_BYTES``) bounds its memory; and the
   parent kills it at exit (``atexit``).

Hand-written rather than a library: ``simpleeval`` and ``asteval`` are general evaluators (names,
strings, comprehensions, or statements) whose limits cap exponents but not round's digits nor the
size of products, so they would need the same per-operation checks on top of a larger surface.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import subprocess
import sys
import threading
import weakref
from typing import Any

MAX_EXPRESSION_CHARS = 300
MAX_RESULT_DIGITS = 300
MAX_EXPONENT = 10_000
MAX_NODES = 400  # syntax-tree nodes (300 characters make at most ~450: a backstop if the length limit grows)
MAX_DEPTH = 100  # nesting of the syntax tree (a sum of 100 terms nests 100 deep)
MAX_ARGS = 8
_LIMIT = 10**MAX_RESULT_DIGITS  # an int at or above this has more than MAX_RESULT_DIGITS digits
_MAX_BITS = _LIMIT.bit_length()

TIME_LIMIT = 2.0  # seconds the parent waits for one answer before it kills the worker
START_TIMEOUT = 20.0  # seconds for a worker to start (an interpreter start on a busy machine)
WORKER_ALARM_SECONDS = 5  # the worker ends itself if one calculation runs this long (parent gone)
WORKER_MEMORY_BYTES = 512 * 1024 * 1024

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_REFUSED_OPERATORS = {
    ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.MatMult: "@", ast.Invert: "~",
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt}


class CalculationError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message says why."""


# ---------------------------------------------------------------- the bounded evaluator


def calculate_expression(expression: str) -> int | float:
    """Evaluate arithmetic safely, in this process: the ``ast`` is walked (never ``eval``), only numbers,
    ``+ - * / // % **``, parentheses and ``abs round min max sqrt`` are allowed, and every operation is
    checked before it runs so that no result or intermediate exceeds ``MAX_RESULT_DIGITS`` digits."""
    text = (expression or "").strip() if isinstance(expression, str) else ""
    if not text:
        raise CalculationError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculationError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalculationError("not an arithmetic expression") from None
    _check_shape(tree.body)
    return _check_size(_evaluate(tree.body))


def _check_shape(root: ast.AST) -> None:
    """Refuse trees with too many nodes or too deep a nesting, before anything is evaluated."""
    count = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculationError(f"the expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise CalculationError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_size(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculationError("the result is not a (real) number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculationError("the result is not finite")
    if isinstance(value, int) and (value.bit_length() > _MAX_BITS or abs(value) >= _LIMIT):
        raise CalculationError(f"the result has more than {MAX_RESULT_DIGITS} digits")
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculationError(f"only numbers are allowed, not {node.value!r:.40}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check_size(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        elif isinstance(node.op, ast.Mult):
            _check_product(left, right)
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        except OverflowError:
            raise CalculationError("the result is too large") from None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalculationError("'^' is not a power here; use ** (for example 2 ** 10)")
    if isinstance(node, (ast.BinOp, ast.UnaryOp)) and type(node.op) in _REFUSED_OPERATORS:
        raise CalculationError(f"'{_REFUSED_OPERATORS[type(node.op)]}' is not allowed; use + - * / // % ** and ( )")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        return _call(node)
    if isinstance(node, ast.Tuple):
        raise CalculationError("write numbers without thousands separators (1200, not 1,200)")
    raise CalculationError(f"'{type(node).__name__}' is not allowed; use numbers, + - * / // % ** and ( )")


def _call(node: ast.Call) -> int | float:
    name = node.func.id  # type: ignore[attr-defined]
    if node.keywords or not node.args or len(node.args) > MAX_ARGS:
        raise CalculationError(f"{name}() takes 1 to {MAX_ARGS} positional numbers")
    args = [_evaluate(a) for a in node.args]
    try:
        if name == "round":
            if len(args) > 2 or (len(args) == 2 and not isinstance(args[1], int)):
                raise CalculationError("round() takes a number and a whole number of digits")
            if len(args) == 2 and abs(args[1]) > MAX_RESULT_DIGITS:
                # round(x, -n) computes 10**n: round(1, -10**18) never finished.
                raise CalculationError(
                    f"round(): the number of digits must be between -{MAX_RESULT_DIGITS} and {MAX_RESULT_DIGITS}")
            return _check_size(round(args[0], *args[1:]))
        return _check_size(_FUNCTIONS[name](*args))
    except CalculationError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise CalculationError(f"{name}(): {exc}") from None


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculationError("the exponent is too large")
    if base == 0:
        return  # 0 ** n is 0, 1, or division by zero
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise CalculationError("a negative number to a fractional power is not a real number")
    if exponent * math.log10(abs(base)) > MAX_RESULT_DIGITS:  # log10 takes ints of any size
        raise CalculationError(f"the result would have more than {MAX_RESULT_DIGITS} digits")


def _check_product(left: int | float, right: int | float) -> None:
    if isinstance(left, int) and isinstance(right, int) and left and right:
        # |a * b| >= 2 ** (bits(a) + bits(b) - 2): refuse before multiplying.
        if left.bit_length() + right.bit_length() - 2 >= _MAX_BITS:
            raise CalculationError(f"the result would have more than {MAX_RESULT_DIGITS} digits")


def format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


# ---------------------------------------------------------------- the worker process


class Calculator:
    """A handle on one calculator worker process; ``evaluate(expression)`` answers or raises
    ``CalculationError`` within ``time_limit`` seconds (plus the worker's start on first use).

    ``command`` replaces the worker's command line (tests use it to run a worker that hangs)."""

    def __init__(self, time_limit: float = TIME_LIMIT, *, command: list[str] | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.time_limit = time_limit
        self.start_timeout = start_timeout
        self._command = command
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # pid that started the worker (a forked child must not share it)
        self._lines: Any = None  # queue.Queue of lines read from the worker's stdout

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (None before the first calculation or after ``close``)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def evaluate(self, expression: str) -> int | float:
        text = (expression or "").strip() if isinstance(expression, str) else ""
        if not text:
            raise CalculationError("empty expression")
        if len(text) > MAX_EXPRESSION_CHARS:  # checked here too: never ship an unbounded string
            raise CalculationError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
        if not self._lock.acquire(timeout=self.start_timeout + 4 * self.time_limit):
            raise CalculationError("the calculator is busy; try again")
        try:
            self._ensure_started()
            try:
                return self._ask(text)
            except _WorkerGone:  # it had died while idle (killed from outside): once more, with a new one
                self.close()
                self._ensure_started()
                return self._ask(text)
        finally:
            self._lock.release()

    def start(self) -> None:
        """Start the worker now rather than on the first calculation (a server may warm it up)."""
        with self._lock:
            self._ensure_started()

    def close(self) -> None:
        """Stop the worker (it is started again on the next calculation)."""
        proc, self._proc = self._proc, None
        if proc is None or self._owner != os.getpid():
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed process is reaped at once
            pass
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        # stdout is closed by its reader thread at end of file (closing it here would wait for that read)

    # ------------------------------------------------------------ internals

    def _ensure_started(self) -> None:
        import queue

        if self._proc is not None and self._owner != os.getpid():
            self._proc = None  # inherited through fork: the worker belongs to the parent
        if self._proc is not None and self._proc.poll() is None:
            return
        self.close()
        if not self._command and not sys.executable:
            raise CalculationError("the calculator cannot start its worker process (no Python executable known)")
        command = self._command or [sys.executable, "-I", "-S", os.path.abspath(__file__)]
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env={}, close_fds=True,
            )
        except OSError as exc:
            raise CalculationError(f"the calculator could not start its worker process ({exc.strerror})") from None
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), name="kb-calculator-reader", daemon=True).start()
        self._proc, self._owner, self._lines = proc, os.getpid(), lines
        _started.add(self)
        _register_atexit()
        try:
            ready = self._reply(self.start_timeout)
        except _WorkerGone:
            ready = None
        if ready is None or ready.get("ready") is not True:
            self.close()
            raise CalculationError("the calculator's worker process did not start")

    def _ask(self, text: str) -> int | float:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"expression": text}).encode("ascii") + b"\n")
            self._proc.stdin.flush()
        except OSError:
            raise _WorkerGone() from None
        try:
            reply = self._reply(self.time_limit)
        except _WorkerGone:  # it died on this expression (its alarm or memory limit): not retried
            self.close()
            raise CalculationError("the calculation was stopped (the calculator's worker process ended)") from None
        if reply is None:
            self.close()  # killed: an expression that slipped past the bounds stops here
            raise CalculationError(f"the calculation took longer than {self.time_limit:g} s and was stopped")
        if isinstance(reply.get("error"), str):
            raise CalculationError(reply["error"])
        value = reply.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CalculationError("the calculator's worker gave no number")
        return _check_size(value)

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        """The worker's next JSON line; None on timeout or a garbled line; ``_WorkerGone`` when it ended."""
        import queue

        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if not line:
            raise _WorkerGone()
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


class _WorkerGone(Exception):
    """The worker's pipe is closed: the process ended."""


def _pump(stream: Any, lines: Any) -> None:
    """Read the worker's lines into a queue (a blocked read releases the GIL); b"" at the end."""
    try:
        for line in iter(stream.readline, b""):
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        lines.put(b"")
        try:
            stream.close()
        except OSError:
            pass


_default: Calculator | None = None
_default_lock = threading.Lock()
_started: weakref.WeakSet[Calculator] = weakref.WeakSet()  # every calculator that started a worker
_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        import atexit

        atexit.register(_close_all)
        _atexit_registered = True


def _close_all() -> None:
    for calculator in list(_started):
        calculator.close()


def default_calculator() -> Calculator:
    """The process-wide calculator the ``calculate`` tool uses."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Calculator()
        return _default


def calculate(expression: str) -> int | float:
    """``calculate_expression`` in the worker process, under ``TIME_LIMIT``: what the tool runs."""
    return default_calculator().evaluate(expression)


def shutdown() -> None:
    """Stop the process-wide calculator's worker (registered with ``atexit``)."""
    with _default_lock:
        if _default is not None:
            _default.close()


# ---------------------------------------------------------------- the worker's side


def _serve() -> None:
    """The worker: one JSON request per line on stdin, one JSON reply per line on stdout."""
    import signal

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not on this platform, or a lower limit already set
        pass
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    has_alarm = hasattr(signal, "alarm")
    if has_alarm:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the default action ends the process, even in C code
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        if has_alarm:
            signal.alarm(WORKER_ALARM_SECONDS)
        try:
            request = json.loads(line)
            reply: dict[str, Any] = {"value": calculate_expression(request["expression"])}
        except CalculationError as exc:
            reply = {"error": str(exc)}
        except MemoryError:
            reply = {"error": "the calculation needs too much memory"}
        except RecursionError:
            reply = {"error": "the expression is nested too deeply"}
        except Exception as exc:  # noqa: BLE001 - any failure is one refused calculation, never a dead worker
            reply = {"error": f"cannot calculate this ({type(exc).__name__})"}
        finally:
            if has_alarm:
                signal.alarm(0)
        out.write(json.dumps(reply).encode("ascii") + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve()
