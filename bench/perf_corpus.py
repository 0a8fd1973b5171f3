"""Synthetic knowledge bases of any size for the benchmarks, cached on disk.

Embedding 50,000 real chunks with MiniLM takes ~20 minutes on 2 cores, so the chunk vectors are
synthetic but shaped like real ones: each of 120 topics is a short text embedded with the real
model, and a chunk's vector is its topic's vector plus Gaussian noise, normalised (cosine to its
topic ~0.8, clustered like real documents, which is what HNSW's cost depends on). Chunk texts are
~700 characters of English drawn from the topic's own words plus common ones, so BM25 has
realistic postings. Questions are made from topic words and embedded live by kb, like a user's.
The index is written with kb's own store (``ingest.store.chroma.open_store``, stamped with the local
model) and BM25 index (``ingest.store.lexical.sync_lexical``), so ``kb search`` / ``kb ask`` open it as
they open any index.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

TOPICS = 120
NOISE = 0.75  # ||noise|| relative to the unit topic vector: cosine(chunk, topic) ~ 0.8
FORMAT = 2  # bump when the corpus changes: cached indexes are rebuilt

COMMON = """the a to of and in for is on with that by this be are as or from at it an will your you
can must should each when after before any all new per our team use used using within without about
please also only if not more than other may into over under their them then there these those which
who while where how what request approval access policy process document page step steps example
note required owner review weekly monthly daily time days hours report system service data account
""".split()

DOMAIN = """vacation leave holiday payroll expense reimbursement receipt travel flight hotel per-diem
invoice vendor purchase budget forecast quarter audit compliance security password vpn laptop
badge onboarding offboarding benefits insurance pension retirement bonus salary promotion manager
oncall incident pager escalation postmortem outage runbook deploy rollback release pipeline build
cluster spark databricks notebook workspace catalog schema table delta lakehouse warehouse query
dashboard alert metric latency throughput kafka stream batch job scheduler airflow dbt model
training inference feature registry experiment mlflow endpoint serving token secret scope vault
network firewall proxy dns certificate tls ssh gateway subnet region backup restore snapshot
retention archive storage bucket s3 adls permissions group role grant revoke sso okta mfa ticket
jira sprint roadmap okr planning review interview hiring referral contractor visa relocation
parking office desk booking cafeteria wellness gym parental sabbatical overtime timesheet shift
handover support sla priority severity customer contract renewal license procurement legal privacy
gdpr retention consent encryption key rotation kms iam policy terraform kubernetes docker image
registry helm chart cost tagging chargeback cluster-policy autoscaling photon serverless unity
lineage governance sharing marketplace partner integration webhook api sdk cli terraform provider
""".split()


def _topics(rng: random.Random) -> list[list[str]]:
    return [rng.sample(DOMAIN, 8) for _ in range(TOPICS)]


def _chunk_text(rng: random.Random, words: list[str], length: int = 110) -> str:
    out = []
    for _ in range(length):
        out.append(rng.choice(words) if rng.random() < 0.3 else rng.choice(COMMON + DOMAIN))
    sentences = [" ".join(out[i : i + 14]).capitalize() + "." for i in range(0, len(out), 14)]
    return " ".join(sentences)


def questions(count: int, seed: int = 11) -> list[str]:
    """Distinct questions about the corpus' topics (the same ones for every size)."""
    rng = random.Random(seed)
    topics = _topics(random.Random(7))
    seen: set[str] = set()
    out: list[str] = []
    templates = ["How do I {} the {} {}?", "What is the {} policy for {} {}?", "Who approves {} {} {}?",
                 "Where do I find the {} for {} and {}?", "When is {} {} {} due?"]
    while len(out) < count:
        words = rng.choice(topics)
        text = rng.choice(templates).format(*rng.sample(words, 3))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_index(cache: Path, size: int, *, log=print, name: str = "index", marker_extra: dict | None = None,
                doc_metadata=None) -> Path:
    """An index of ``size`` chunks under ``cache`` (built once, reused while its marker matches).

    ``name``: the folder is ``<name>-<size>``; ``marker_extra``: more of what the cached index must match;
    ``doc_metadata(doc)``: extra metadata for every chunk of document ``doc`` (bench/access_bench.py
    labels them)."""
    from ingest.embeddings.local import LocalMiniLMEmbeddings
    from ingest.store.chroma import open_store

    index_dir = Path(cache) / f"{name}-{size}"
    marker = index_dir / "bench-corpus.json"
    want = {"format": FORMAT, "size": size, "topics": TOPICS, "noise": NOISE, **(marker_extra or {})}
    try:
        if json.loads(marker.read_text("utf-8")) == json.loads(json.dumps(want)):
            _sync_lexical(index_dir)  # a newer kb may index BM25 differently
            return index_dir
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    log(f"building a synthetic {name} of {size:,} chunks in {index_dir} (cached for next runs)...")
    shutil.rmtree(index_dir, ignore_errors=True)
    rng = random.Random(7)
    topics = _topics(rng)
    encoder = LocalMiniLMEmbeddings().encoder()
    topic_vectors = encoder.encode([" ".join(words) for words in topics])
    noise_rng = np.random.default_rng(size)
    store = open_store(index_dir, LocalMiniLMEmbeddings(), create=True)
    root = "/bench/knowledge"
    batch = 2000
    for start in range(0, size, batch):
        n = min(batch, size - start)
        which = [(start + i) % TOPICS for i in range(n)]
        vectors = topic_vectors[which] + noise_rng.normal(0, NOISE / np.sqrt(384), (n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids, texts, metas = [], [], []
        for i, topic in zip(range(start, start + n), which):
            doc, chunk = divmod(i, 8)
            ids.append(f"bench-{i:07d}")
            texts.append(_chunk_text(rng, topics[topic]))
            metas.append({"source": f"topic-{topic:03d}/doc-{doc:06d}.md", "title": f"{topics[topic][0].title()} guide {doc}",
                          "section": f"{topics[topic][1].title()} > {topics[topic][2]}", "chunk": chunk, "root": root,
                          **(doc_metadata(doc) if doc_metadata else {})})
        store.upsert(ids, texts, metas, vectors)
    _sync_lexical(index_dir, store)
    marker.write_text(json.dumps(want), "utf-8")
    log(f"  built in {time.perf_counter() - started:.0f} s")
    return index_dir


def _sync_lexical(index_dir: Path, store=None) -> None:
    """Bring the index's BM25 index and query snapshot up to date, as ``kb ingest`` does at its end."""
    from ingest.store.lexical import sync_lexical
    from ingest.store.snapshot import sync_snapshot

    if store is None:
        from ingest.embeddings.local import LocalMiniLMEmbeddings
        from ingest.store.chroma import open_store

        store = open_store(index_dir, LocalMiniLMEmbeddings())
    sync_lexical(index_dir, store)
    sync_snapshot(index_dir, store)
