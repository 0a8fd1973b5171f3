"""Access rules (``ingest.access``) and the store filter that enforces them (``Filter.readable_by``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.access import (
    NOBODY,
    PUBLIC,
    AccessRulesError,
    can_read,
    front_matter_access,
    load_rules,
    parse_groups,
    parse_rules,
    readable_by,
)
from ingest.store.base import Filter
from ingest.store.memory import MemoryChunkStore

RULES = """
# everyone by default, then narrower folders; the last matching rule wins
**: *
hr/**: hr, hr-admins
hr/handbook.md: *            # the handbook is public again
legal/*.md: legal
**/secret.txt: security
"""


def test_last_matching_rule_wins_and_globs_match_across_folders() -> None:
    rules = parse_rules(RULES)
    assert rules.labels("hr/cases/2024/case-17.md") == ("hr", "hr-admins")
    assert rules.labels("hr/handbook.md") == (PUBLIC,)
    assert rules.labels("legal/nda.md") == ("legal",)
    assert rules.labels("legal/old/nda.md") == (PUBLIC,)  # '*' does not cross folders
    assert rules.labels("secret.txt") == ("security",) and rules.labels("a/b/secret.txt") == ("security",)
    assert rules.labels("notes.md") == (PUBLIC,)


def test_uncovered_documents_follow_the_default() -> None:
    assert parse_rules("hr/**: hr").labels("readme.md") == (PUBLIC,)
    assert parse_rules("hr/**: hr", default="none").labels("readme.md") == (NOBODY,)
    assert parse_rules("hr/**: hr", default="none").labels("hr/x.md") == ("hr",)


def test_front_matter_wins_over_the_file(tmp_path: Path) -> None:
    doc = tmp_path / "memo.md"
    doc.write_text("---\ntitle: Memo\naccess: [legal, Exec]\n---\n# Memo\n", encoding="utf-8")
    front = front_matter_access(doc)
    assert front == ("Exec", "legal")
    assert parse_rules("**: *").labels("memo.md", front) == ("Exec", "legal")
    block = tmp_path / "block.md"
    block.write_text("---\naccess:\n  - hr\n  - legal\n---\ntext\n", encoding="utf-8")
    assert front_matter_access(block) == ("hr", "legal")
    plain = tmp_path / "plain.md"
    plain.write_text("# no front matter\naccess: [hr]\n", encoding="utf-8")
    assert front_matter_access(plain) is None
    bad = tmp_path / "bad.md"
    bad.write_text("---\naccess: [h r]\n---\n", encoding="utf-8")
    with pytest.raises(AccessRulesError, match="invalid group name"):
        front_matter_access(bad)


def test_bad_rules_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(AccessRulesError, match="line 2"):
        parse_rules("**: *\nhr/** hr\n")
    with pytest.raises(AccessRulesError, match="line 1: invalid group name"):
        parse_rules("hr/**: h;r\n")
    (tmp_path / ".kb-access").write_bytes(b"\xff\xfe")
    with pytest.raises(AccessRulesError, match="not UTF-8"):
        load_rules(tmp_path)
    assert load_rules(tmp_path / "nothing-here").rules == ()


def test_groups_and_readers() -> None:
    assert parse_groups("hr|legal") == parse_groups(" hr , legal ") == {"hr", "legal"}
    assert readable_by(None) is None
    assert readable_by(set()) == {PUBLIC}
    assert readable_by({"hr", NOBODY}) == {"hr", PUBLIC}  # no caller reads what no one may read
    assert can_read(["hr"], {"hr"}) and can_read([PUBLIC], set()) and can_read(["hr"], None)
    assert not can_read(["hr"], {"legal"}) and not can_read([NOBODY], {"hr"})
    assert can_read(None, {"hr"}) and can_read(None, set())  # recorded before access control: everyone's


def _store() -> MemoryChunkStore:
    store = MemoryChunkStore(embeddings=None, model_id="test")
    rows = [
        ("p1", "vacation policy for everyone", [PUBLIC], [1.0, 0.0]),
        ("h1", "vacation quokka salary table", ["hr"], [1.0, 0.01]),
        ("h2", "vacation quokka bonus table", ["hr"], [1.0, 0.02]),
        ("l1", "vacation narwhal contract", ["legal"], [1.0, 0.03]),
        ("p2", "vacation carry over rules", [PUBLIC], [0.5, 0.5]),
        ("u1", "vacation unlabelled chunk", None, [1.0, 0.04]),
    ]
    for cid, text, access, vector in rows:
        meta = {"source": f"{cid}.md"} | ({"access": access} if access is not None else {})
        store.upsert([cid], [text], [meta], [np.asarray(vector, dtype=np.float32)])
    return store


def test_filtered_search_fills_top_k_with_readable_chunks_only() -> None:
    store = _store()
    public = Filter(readable_by=readable_by(set()))
    hr = Filter(readable_by=readable_by({"hr"}))
    # not the 3 closer forbidden ones; the unlabelled chunk (indexed before access control) is everyone's
    assert [h.id for h in store.nearest([1.0, 0.0], 3, filter=public)] == ["p1", "u1", "p2"]
    assert [h.id for h in store.nearest([1.0, 0.0], 3, filter=hr)] == ["p1", "h1", "h2"]
    assert [h.id for h in store.nearest([1.0, 0.0], 10)] == ["p1", "h1", "h2", "l1", "u1", "p2"]
    lexical = store.lexical("quokka narwhal vacation", filter=public)
    assert {cid for cid, _ in lexical.top(10)} == {"p1", "p2", "u1"}
    assert lexical.score_and_rank("h1") == (0.0, None)  # forbidden: no score, no rank
    assert {cid for cid, _ in store.lexical("quokka", filter=hr).top(10)} == {"h1", "h2"}
    assert [c for page in store.scan(filter=hr) for c in page.ids] == ["p1", "h1", "h2", "p2", "u1"]


def test_filter_key_is_stable_and_distinguishes_groups() -> None:
    a = Filter(readable_by=frozenset({"hr", "*"}))
    assert a.key() == Filter(readable_by=frozenset({"*", "hr"})).key()
    assert a.key() != Filter(readable_by=frozenset({"*"})).key() and not a.empty
