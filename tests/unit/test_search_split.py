"""``kb search`` ranks with ``agent.rag.search.KnowledgeSearch`` (no LangChain runnables); chains and
the answer service with ``agent.rag.retrieval.KnowledgeRetriever``. Both run the same ``Ranking``:
same options, same documents, whether the store hands over the dense hits' chunks (``nearest``) or
only their ids (``nearest_ids``, the snapshot) and the ranking reads the chunks it walks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.rag.retrieval import KnowledgeRetriever, retriever_for
from agent.rag.search import DEFAULTS, KnowledgeSearch
from ingest.store.memory import MemoryChunkStore
from tests.unit.test_chunk_store import CHUNKS, WordHashEmbeddings, fill

QUERIES = ["vacation days", "deploy rollback on fridays", "pager page", "zebra", "pension five percent"]


class IdsFirstStore(MemoryChunkStore):
    """A memory store that also ranks without reading the chunks, like the snapshot."""

    reads: int = 0

    def nearest_ids(self, vector, k, *, filter=None):
        return [(hit.id, hit.distance) for hit in self.nearest(vector, k, filter=filter)]

    def get(self, ids, **kwargs):
        self.reads += len(ids) if kwargs.get("texts", True) else 0
        return super().get(ids, **kwargs)


def _store(cls: type = MemoryChunkStore) -> MemoryChunkStore:
    embeddings = WordHashEmbeddings()
    store = cls(embeddings)
    fill(store, embeddings)
    return store


def _view(documents) -> list[tuple]:
    return [(d.id, d.page_content, sorted(d.metadata.items())) for d in documents]


def test_the_retriever_declares_the_searchs_options_and_defaults() -> None:
    fields = KnowledgeRetriever.model_fields
    assert {name: fields[name].default for name in DEFAULTS} == DEFAULTS


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize("options", [{}, {"fusion": "rrf"}, {"max_per_source": 1, "k": 4}])
def test_search_and_retriever_return_the_same_documents(mode: str, options: dict) -> None:
    search = KnowledgeSearch(_store(), mode=mode, **options)
    retriever = KnowledgeRetriever(store=_store(), mode=mode, **options)
    lazy = KnowledgeSearch(_store(IdsFirstStore), mode=mode, **options)
    for query in QUERIES:
        expected = _view(retriever.invoke(query))
        assert expected, query
        assert _view(search.invoke(query)) == expected, query
        assert _view(lazy.invoke(query)) == expected, query
    assert _view(retriever_for(search).invoke("vacation days", k=2)) == _view(search.invoke("vacation days", k=2))


def test_the_ranking_reads_only_the_chunks_its_walk_reaches() -> None:
    store = _store(IdsFirstStore)
    search = KnowledgeSearch(store, mode="hybrid", k=2, candidates=len(CHUNKS), page_support=0)
    assert len(search.invoke("vacation days")) == 2
    assert 0 < store.reads < len(CHUNKS)  # ranked every chunk, read a batch of them
    # page support needs every candidate's page: it reads them all, once
    supported = _store(IdsFirstStore)
    assert len(KnowledgeSearch(supported, mode="hybrid", k=2, candidates=len(CHUNKS)).invoke("vacation days")) == 2
    assert supported.reads == len(CHUNKS)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError, match="kk"):
        KnowledgeSearch(_store(), kk=3)


def test_importing_the_search_loads_no_langchain_runnables() -> None:
    code = ("import sys, agent.rag.search\n"
            "print(sorted(m for m in ('langchain_core.retrievers', 'langchain_core.callbacks', 'langsmith', "
            "'bm25s', 'scipy', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
