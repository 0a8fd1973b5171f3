"""The network block of unit tests (``no_network`` in tests/conftest.py, applied here by
tests/unit/conftest.py): any IP connect or lookup fails loudly, even when the code swallows it."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.conftest import NetworkBlocked

REPO = Path(__file__).resolve().parents[2]


def test_a_connect_to_any_address_fails_loopback_included(no_network: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # binding and listening are not network use
        port = server.getsockname()[1]
        for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET, ("192.0.2.1", 443))):
            with socket.socket(family) as client, pytest.raises(NetworkBlocked, match="network access in a unit test"):
                client.connect(address)
        with socket.socket() as client, pytest.raises(NetworkBlocked):
            client.connect_ex(("127.0.0.1", port))
    with pytest.raises(NetworkBlocked, match="getaddrinfo"):
        socket.create_connection(("example.org", 80))
    assert len(no_network) == 4
    no_network.clear()  # expected attempts: the teardown check would fail this test otherwise


def test_http_clients_get_the_error_not_a_retryable_connection_error(no_network: list[str]) -> None:
    with pytest.raises(NetworkBlocked):
        httpx.get("http://127.0.0.1:9/", timeout=1)
    assert no_network
    no_network.clear()


def test_unix_sockets_still_work() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"ok")
        assert right.recv(2) == b"ok"


PLUGIN = """
from tests.conftest import _unit_tests_have_no_network, no_network  # noqa: F401
"""


def test_a_swallowed_attempt_still_fails_the_test_and_only_marked_tests_are_blocked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(PLUGIN)
    pytester.makeini("[pytest]\nmarkers =\n    unit: blocked network\n")
    pytester.makepyfile(textwrap.dedent("""
        import socket
        import pytest

        @pytest.mark.unit
        def test_swallows():
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1)
            except Exception:
                pass

        @pytest.mark.unit
        def test_clean():
            assert 1 + 1 == 2

        def test_not_unit_may_use_loopback():
            with socket.create_server(("127.0.0.1", 0)) as server:
                socket.create_connection(server.getsockname(), timeout=5).close()
    """))
    # In a child process: this test's own block must not see the inner tests' sockets.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)  # test_swallows passes its call, then errors at teardown
    result.stdout.fnmatch_lines(["*test_swallows*", "*tried to reach the network 1 time(s)*"])
