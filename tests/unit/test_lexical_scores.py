"""kb scores BM25 queries itself over the arrays bm25s saved (no bm25s, no SciPy at query time):
the scores must be bm25s's own, bit for bit, and a query process must not import bm25s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ingest.store.lexical import LexicalIndex, lexical_dir, tokenize

TEXTS = [
    "Employees get 25 vacation days a year; unused vacation days carry over.",
    "Expense reports need receipts for every expense over 25 euros.",
    "Rolling back a deploy: run the rollback pipeline, then page the on-call engineer.",
    "The VPN needs MFA; reset your password in the self-service portal.",
    "Vacation requests go through the HR portal two weeks ahead.",
    "",
]
QUERIES = ["vacation days", "vacation vacation carry over", "rollback deploys", "nothing matches zzz", "",
           "How do I reset my VPN password?", "receipts for expenses"]


def _saved(tmp_path: Path) -> LexicalIndex:
    ids = [f"c{i}" for i in range(len(TEXTS))]
    built = LexicalIndex.build(ids, TEXTS, [{"source": f"doc{i}.md", "title": f"T{i}"} for i in range(len(TEXTS))])
    built.save(tmp_path, "0" * 64)
    loaded = LexicalIndex.load(tmp_path)
    assert loaded is not None
    return loaded[0]


def test_scores_equal_bm25s_scores(tmp_path: Path) -> None:
    import bm25s

    index = _saved(tmp_path)
    folder = next(p for p in lexical_dir(tmp_path).iterdir() if p.is_dir())
    model = bm25s.BM25.load(str(folder), show_progress=False)
    for query in QUERIES:
        ours = index.search(query).scores
        tokens = [t for t in tokenize(query) if t in model.vocab_dict]
        theirs = model.get_scores(tokens) if tokens else np.zeros(len(TEXTS), dtype=np.float32)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, np.asarray(theirs, dtype=np.float32)), query
    assert index.search("vacation days").top(2)[0][0] in {"c0", "c4"}
    assert index.search("zzz").top(5) == []


def test_a_built_index_scores_like_the_loaded_one(tmp_path: Path) -> None:
    ids = [f"c{i}" for i in range(len(TEXTS))]
    built = LexicalIndex.build(ids, TEXTS, [None] * len(TEXTS))
    built.save(tmp_path, "1" * 64)
    loaded = LexicalIndex.load(tmp_path)[0]
    for query in QUERIES:
        assert np.array_equal(built.search(query).scores, loaded.search(query).scores), query


def test_loading_and_querying_import_neither_bm25s_nor_scipy(tmp_path: Path) -> None:
    _saved(tmp_path)
    code = (
        "import sys; from pathlib import Path; from ingest.store.lexical import LexicalIndex\n"
        f"index, _ = LexicalIndex.load(Path({str(tmp_path)!r}))\n"
        "assert index.search('vacation days').top(1)\n"
        "print(sorted(m for m in ('bm25s', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
