"""Per-question work a long-lived process does not repeat: settings are validated once per
environment (yet every change is seen), BM25 chunk positions are built once per index."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent import settings as settings_module
from agent.settings import Settings, load_settings
from ingest.store.lexical import LexicalIndex


@pytest.fixture
def constructions(env: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times Settings is validated; a fresh environment so no earlier load matches."""
    monkeypatch.setenv("KB_TEST_RUN", uuid.uuid4().hex)
    made: list[int] = []

    class Counting(Settings):
        def __init__(self, **kwargs) -> None:
            made.append(1)
            super().__init__(**kwargs)

    monkeypatch.setattr(settings_module, "Settings", Counting)
    return made


def test_the_same_environment_is_validated_once(constructions: list[int]) -> None:
    first, second = load_settings(), load_settings()
    assert len(constructions) == 1
    assert first == second and first is not second
    first.usage_context["team"] = "changed"  # a caller changing its copy changes nobody else's
    assert "team" not in load_settings().usage_context


def test_every_change_is_seen(constructions: list[int], env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().top_k == 5
    monkeypatch.setenv("KB_TOP_K", "7")
    assert load_settings().top_k == 7
    monkeypatch.delenv("KB_TOP_K")
    (env / ".env").write_text("KB_TOP_K=9\n")
    assert load_settings().top_k == 9
    (env / ".env").write_text("KB_TOP_K=8\n")  # same size, same instant: the contents decide
    assert load_settings().top_k == 8
    assert load_settings(top_k=3).top_k == 3
    other = env / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # another working directory: another .env (none here)
    assert load_settings().top_k == 5
    monkeypatch.setenv("KB_TOP_K", "0")
    with pytest.raises(Exception, match="KB_TOP_K"):  # invalid values still fail every time
        load_settings()
    with pytest.raises(Exception, match="KB_TOP_K"):
        load_settings()


def test_bm25_positions_are_built_once_per_index() -> None:
    ids = [f"c{n}" for n in range(5)]
    texts = ["vacation days per year", "vpn gateway berlin", "expenses approval", "vacation carry over", "oncall"]
    index = LexicalIndex.build(ids, texts, [None] * 5)
    first, second = index.search("vacation"), index.search("vpn berlin")
    assert first._positions() is second._positions()
    assert first.score_and_rank("c0")[1] in (1, 2) and first.score_and_rank("c1") == (0.0, None)
    assert second.score_and_rank("c1")[1] == 1 and second.top(1)[0][0] == "c1"
