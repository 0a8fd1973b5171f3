"""Unit tests: logic with fakes only (fake chat models, deterministic embeddings), no network at all.

Every test under tests/unit/ gets ``no_network`` (tests/conftest.py): a socket connect or name
lookup to any address fails the test with a clear error. Tests that need the loopback Databricks
server belong in tests/wire/, subprocesses and browsers in tests/e2e/.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_network_in_unit_tests(no_network: list[str]) -> None:
    """Applies the network block to every test in this folder."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything here ``unit`` so ``pytest -m unit`` selects it wherever it is run from."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.unit)
