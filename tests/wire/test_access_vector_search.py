"""Access control on a Databricks Vector Search index (ingest/store/vector_search.py) through the real
databricks-sdk client against the loopback server of tests/vector_search_stub.py: ``readable_by`` is a
``filters_json`` condition on the ``ARRAY<STRING>`` column ``access`` (the service ranks only readable
rows), so every caller's top k is full of chunks it may read, the same ones the Chroma path returns."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from agent.rag.retrieval import KnowledgeRetriever
from ingest.access import readable_by
from ingest.errors import IndexUnusableError
from ingest.store import vector_search as vs_module
from ingest.store.base import Filter
from ingest.store.chroma import open_store, release_clients
from ingest.store.vector_search import open_vector_store
from ingest.sync.job import ingest
from tests.corpus import write_corpus
from tests.vector_search_stub import VectorSearchStub
from tests.wire.test_sync import HashEmbeddings, vector
from tests.wire.test_vector_search import INDEX, client, config, run

PUBLIC_MARK, HR_MARK, LEGAL_MARK = "zephyrpublic", "quokkahr", "narwhallegal"
MARKS = {"*": PUBLIC_MARK, "hr": HR_MARK, "legal": LEGAL_MARK}
CALLERS = {"pub": frozenset(), "hr": frozenset({"hr"}), "legal": frozenset({"legal"})}
OLD_SCHEMA = {name: kind for name, kind in vs_module.SCHEMA.items() if name != "access"}


class TopicEmbeddings(Embeddings):
    """32-dim vectors whose first three dimensions count the three markers' topics (so dense search
    clusters by group, like real documents) plus hash noise that makes every text's vector unique."""

    model_id = "test:topic-32"
    dimension = 32
    WORDS = ({HR_MARK, "salary", "bands"}, {LEGAL_MARK, "clause"}, {PUBLIC_MARK, "handbook"})

    def _vector(self, text: str) -> list[float]:
        words = text.lower().replace(".", " ").split()
        raw = [3.0 * sum(w in topic for w in words) for topic in self.WORDS]
        raw += [b / 255 - 0.5 for b in hashlib.sha256(text.encode()).digest()[:29]]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def write_marker_corpus(root: Path) -> Path:
    """6 public documents that mention salaries once; 30 HR and 30 legal ones about little else."""
    for folder in ("public", "hr", "legal"):
        (root / folder).mkdir(parents=True)
    for i in range(6):
        (root / "public" / f"handbook{i}.md").write_text(
            f"# Handbook {i}\n\nThe handbook page {i} mentions salary once. Reference {PUBLIC_MARK}.\n", encoding="utf-8")
    for i in range(30):
        (root / "hr" / f"bands{i:02}.md").write_text(
            f"# Salary bands {i}\n\nSalary bands salary review salary {i}. Case {HR_MARK} salary.\n", encoding="utf-8")
        (root / "legal" / f"clause{i:02}.md").write_text(
            f"# Salary clause {i}\n\nThe salary clause salary {i} of the contract. Matter {LEGAL_MARK} salary.\n",
            encoding="utf-8")
    (root / ".kb-access").write_text("**: *\nhr/**: hr\nlegal/**: legal\n", encoding="utf-8")
    return root


def forbidden(caller: str) -> list[str]:
    allowed = readable_by(CALLERS[caller]) or frozenset()
    return [mark for group, mark in MARKS.items() if group not in allowed]


@pytest.fixture
def vs():
    with VectorSearchStub() as stub:
        yield stub


@pytest.fixture
def stores(vs: VectorSearchStub, tmp_path: Path):
    corpus = write_marker_corpus(tmp_path / "docs")
    ingest([corpus], tmp_path / "chroma", TopicEmbeddings())
    run([corpus], tmp_path / "vs", vs, TopicEmbeddings())
    chroma = open_store(tmp_path / "chroma", TopicEmbeddings())
    remote = open_vector_store(client(vs), config(), TopicEmbeddings())
    try:
        yield chroma, remote
    finally:
        release_clients()


def test_rows_carry_their_readers_in_an_array_column(vs, stores) -> None:
    created = vs.calls("/vector-search/indexes", "POST")[0][3]
    assert json.loads(created["direct_access_index_spec"]["schema_json"])["access"] == "array<string>"
    readers = {row["source"].split("/")[0]: row["access"] for row in vs.rows(INDEX).values()}
    assert readers == {"public": ["*"], "hr": ["hr"], "legal": ["legal"]}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_callers_top_k_is_full_of_readable_chunks_like_chroma(vs, stores, caller: str) -> None:
    chroma, remote = stores
    groups = CALLERS[caller]
    question = f"salary bands salary clause {HR_MARK} {LEGAL_MARK}"
    for mode in ("dense", "bm25", "hybrid"):
        ours = KnowledgeRetriever(store=remote, k=5, mode=mode).invoke(question, groups=groups)
        theirs = KnowledgeRetriever(store=chroma, k=5, mode=mode).invoke(question, groups=groups)
        assert len(ours) == len(theirs) == 5, (caller, mode)  # full: 6 public documents at least
        text = json.dumps([[d.page_content, d.metadata] for d in ours])
        for mark in forbidden(caller):
            assert mark not in text, (caller, mode, mark)
        if caller != "pub":  # the caller's own documents are the best matches: they are found
            assert MARKS[caller] in text, (caller, mode)
        if mode == "dense":  # the same exact cosine ranking over the same readable chunks
            assert [d.id for d in ours] == [d.id for d in theirs], caller
        else:  # the service ranks by its own BM25/fusion: the same kind of chunks, all readable
            assert {d.metadata["source"].split("/")[0] for d in ours} == \
                {d.metadata["source"].split("/")[0] for d in theirs}, (caller, mode)
        sent = json.loads(vs.calls("/query")[-1][3]["filters_json"])
        assert sent == {"access": sorted(readable_by(groups))}  # inside the query, not after it


def test_the_filter_is_applied_before_the_top_k_not_after(vs, stores) -> None:
    """60 forbidden chunks outrank the public ones: a k of 5 still comes back full of public chunks,
    from a query that asked for 5 rows (no widening, nothing to filter out afterwards)."""
    _, remote = stores
    public = Filter(readable_by=readable_by(frozenset()))
    for mode in ("bm25", "dense", "hybrid"):
        hits = remote.search(f"salary {HR_MARK} {LEGAL_MARK}", None, 5, mode=mode, filter=public)
        assert len(hits) == 5 and all(h.metadata["source"].startswith("public/") for h, _ in hits), mode
        assert vs.calls("/query")[-1][3]["num_results"] == 5
    unfiltered = remote.search(f"salary {HR_MARK} {LEGAL_MARK}", None, 5, mode="bm25")
    assert not any(h.metadata["source"].startswith("public/") for h, _ in unfiltered)  # they would have crowded it
    scanned = [m["source"] for page in remote.scan(filter=Filter(readable_by=frozenset({"*", "hr"})))
               for m in page.metadatas or []]
    assert len(scanned) == 36 and not any(s.startswith("legal/") for s in scanned)


def test_an_index_without_the_access_column_is_refused_until_rebuilt(vs, tmp_path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "docs")
    monkeypatch.setattr(vs_module, "SCHEMA", OLD_SCHEMA)  # an index created before kb had the column
    first = run([corpus], tmp_path / "index", vs)
    monkeypatch.setattr(vs_module, "SCHEMA", {**OLD_SCHEMA, "access": "array<string>"})
    assert first.added == 5 and not any("access" in row for row in vs.rows(INDEX).values())
    store = open_vector_store(client(vs), config(), HashEmbeddings())
    assert store.nearest(vector("vpn"), 3)  # without groups (the CLI) it still answers
    queries = len(vs.calls("/query"))
    with pytest.raises(IndexUnusableError) as caught:
        store.nearest(vector("vpn"), 3, filter=Filter(readable_by=frozenset({"*"})))
    message = str(caught.value)
    assert "\n" not in message and "kb ingest --rebuild" in message and "KB_VS_INDEX" in message
    assert len(vs.calls("/query")) == queries  # refused before asking: never filtered after the top k
    with pytest.raises(IndexUnusableError):
        list(store.scan(filter=Filter(readable_by=frozenset({"*"}))))
    again = run([corpus], tmp_path / "index", vs)  # an ingest says what access control needs
    assert any("kb ingest --rebuild" in line for line in again.notices), again.notices

    rebuilt = run([corpus], tmp_path / "index", vs, rebuild=True)
    assert vs.deleted_indexes == [INDEX] and any("create it again" in line for line in rebuilt.notices)
    rows = vs.rows(INDEX)
    assert rebuilt.added == 5 and len(rows) == rebuilt.chunks_total and all(r["access"] == ["*"] for r in rows.values())
    store = open_vector_store(client(vs), config(), HashEmbeddings())
    assert store.nearest(vector("vpn"), 3, filter=Filter(readable_by=frozenset({"*"})))
    assert json.loads(vs.calls("/query")[-1][3]["filters_json"]) == {"access": ["*"]}


def test_kb_search_as_groups_on_an_old_index_is_one_line(env, kb, monkeypatch, vs, tmp_path) -> None:
    for name, value in {"KB_VECTOR_STORE": "databricks", "KB_VS_INDEX": INDEX, "KB_VS_ENDPOINT": "kb-endpoint",
                        "DATABRICKS_HOST": vs.host_url, "DATABRICKS_TOKEN": vs.token}.items():
        monkeypatch.setenv(name, value)
    corpus = write_corpus(tmp_path / "docs")
    with monkeypatch.context() as patch:
        patch.setattr(vs_module, "SCHEMA", OLD_SCHEMA)
        assert kb("ingest", str(corpus)).exit_code == 0
    result = kb("search", "how do I connect to the VPN", "--as-groups", "hr")
    assert result.exit_code != 0 and "kb ingest --rebuild" in result.output
    assert len(result.output.strip().splitlines()) <= 2 and vs.token not in result.output
    assert kb("ingest", str(corpus), "--rebuild").exit_code == 0
    result = kb("search", "how do I connect to the VPN", "--as-groups", "hr", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["source"] == "it/vpn.html"


def test_delta_sync_index_maps_its_readers_column_or_says_it_has_none(vs, caplog) -> None:
    columns = {"chunk_id": "string", "content": "string", "url": "string", "readers": "array<string>",
               "emb": "array<float>"}
    index = vs.add_delta_sync_index(INDEX, "kb-endpoint", columns=columns, dimension=32, vector_column="emb",
                                    primary_key="chunk_id")
    docs = [("The salary bands are secret.", ["hr"]), ("The salary handbook is public.", ["*"]),
            ("The salary clause is legal's.", ["legal", "hr"])]
    for i, (text, readers) in enumerate(docs):
        index.rows[f"c{i}"] = {"chunk_id": f"c{i}", "content": text, "url": f"https://wiki/{i}", "readers": readers,
                               "emb": vector(text)}
    names = {"id": "chunk_id", "text": "content", "source": "url", "vector": "emb"}
    public = Filter(readable_by=readable_by(frozenset()))
    hr = Filter(readable_by=readable_by(frozenset({"hr"})))

    mapped = open_vector_store(client(vs), config(columns={**names, "access": "readers"}, read_only=True),
                               HashEmbeddings())
    assert [h.id for h in mapped.nearest(vector("salary"), 3, filter=public)] == ["c1"]
    assert json.loads(vs.calls("/query")[-1][3]["filters_json"]) == {"readers": ["*"]}
    assert sorted(h.id for h in mapped.nearest(vector("salary"), 3, filter=hr)) == ["c0", "c1", "c2"]
    assert mapped.nearest(vector("salary"), 3, filter=public)[0].metadata["access"] == ["*"]

    unmapped = open_vector_store(client(vs), config(columns=names, read_only=True), HashEmbeddings())
    with caplog.at_level(logging.WARNING, logger="kb.store"):
        assert len(unmapped.nearest(vector("salary"), 3, filter=public)) == 3  # no labels: everyone's
        assert not caplog.records  # a public-only caller: nothing configured to warn about
        assert len(unmapped.nearest(vector("salary"), 3, filter=hr)) == 3
        unmapped.nearest(vector("salary"), 3, filter=hr)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "KB_VS_COLUMNS" in warnings[0] and "every caller reads every row" in warnings[0]
    assert "filters_json" not in vs.calls("/query")[-1][3]
