"""`policyrag bench retrieval`: filtered top-10 search latency and recall, ours against the
embedded stores a user would otherwise pick, in one run on the same vectors and filters.

- ours: Qdrant Edge through our Store (hybrid dense + BM25 with RRF, the access filter in every
  prefetch; plus the dense-only filtered query for recall);
- llama-index `QdrantVectorStore` over qdrant-client local mode (`path=`), its hybrid mode with
  the same BM25 vectors, and its dense mode;
- Chroma `PersistentClient` (defaults), dense only (it has no sparse vectors), the same filter
  expressed as one boolean metadata key per group.

recall@10 is measured for the dense filtered query of each store against exact brute-force
filtered search (numpy), at three filter selectivities including a group that can read ~1% of
the chunks. Synthetic data: random unit vectors (384-d), random BM25 texts, 20 groups.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from core.settings import Settings
from retrieval.acl import Principal, build_acl_filter
from retrieval.embed import DENSE_DIM, SparseEncoder
from retrieval.store import StoredPoint, StoreQuery
from retrieval.store_edge import EdgeStore

GROUPS = [f"g{i:02d}" for i in range(20)]
_WORDS = [f"w{i}" for i in range(3000)]
K = 10


def _synthetic(n: int, seed: int = 5):
    # Embeddings of real text live near a low-dimensional manifold; uniform random 384-d vectors
    # have no meaningful neighbours (every cosine ~0), which no ANN index can rank. So: a
    # 24-d latent projected to 384-d plus isotropic noise, then normalized.
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((24, DENSE_DIM)).astype(np.float32)
    latent = rng.standard_normal((n, 24)).astype(np.float32)
    vectors = latent @ projection + 0.5 * rng.standard_normal((n, DENSE_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weights = np.array([1 / (i + 1) for i in range(1, 20)])
    weights /= weights.sum()
    py = random.Random(seed)
    groups: list[list[str]] = []
    texts: list[str] = []
    zipf = [1 / (i + 1) for i in range(len(_WORDS))]
    for _ in range(n):
        g = {GROUPS[1 + int(rng.choice(19, p=weights))]}
        if py.random() < 0.01:
            g.add("g00")  # the restrictive group: ~1% of chunks
        groups.append(sorted(g))
        texts.append(" ".join(py.choices(_WORDS, weights=zipf, k=40)))
    return vectors, groups, texts


def _principals() -> dict[str, Principal]:
    return {
        "restrictive (g00)": Principal("r", ("g00",), "global"),
        "medium (g03)": Principal("m", ("g03",), "global"),
        "broad (g01,g02)": Principal("b", ("g01", "g02"), "global"),
    }


def _exact_topk(vectors, mask, q, k=K) -> list[int]:
    idx = np.nonzero(mask)[0]
    if len(idx) == 0:
        return []
    scores = vectors[idx] @ q
    order = np.argsort(-scores)[:k]
    return [int(idx[i]) for i in order]


def run_retrieval_benchmark(
    *, sizes=(10_000, 100_000), queries: int = 50, slow_queries: int = 10, console: Console | None = None
) -> dict:
    console = console or Console(stderr=True)
    results: dict = {"k": K, "sizes": {}}
    for n in sizes:
        results["sizes"][str(n)] = _bench_size(n, queries, slow_queries, console)
    return results


def _bench_size(n: int, queries: int, slow_queries: int, console: Console) -> dict:
    work = Path(tempfile.mkdtemp(prefix="policyrag-bench-retrieval-"))
    try:
        console.print(f"[bold]{n:,} chunks[/]: generating")
        vectors, groups, texts = _synthetic(n)
        bm25 = SparseEncoder()
        sparse_docs = [bm25.document(t) for t in texts]
        ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
        rng = np.random.default_rng(99)
        qidx = rng.choice(n, size=queries, replace=False)
        qvecs = vectors[qidx] + 0.3 * rng.standard_normal((queries, DENSE_DIM)).astype(np.float32) / np.sqrt(DENSE_DIM)
        qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
        qtexts = [" ".join(texts[i].split()[:6]) for i in qidx]
        out: dict = {"selectivity": {}, "build_seconds": {}}

        # --- ours: Qdrant Edge -------------------------------------------------------------
        t0 = time.perf_counter()
        edge = EdgeStore(work / "edge")
        batch = 2000
        for s in range(0, n, batch):
            edge.upsert([
                StoredPoint(ids[i], vectors[i].tolist(), sparse_docs[i],
                            {"groups": groups[i], "region": "global", "doc_id": f"d{i // 10}",
                             "citation_id": f"d{i // 10}@v1#c{i % 10}", "text": texts[i]})
                for i in range(s, min(n, s + batch))
            ])
        edge.optimize()  # build HNSW + payload-aware links, as ingest does past its threshold
        out["build_seconds"]["qdrant_edge"] = round(time.perf_counter() - t0, 1)
        console.print(f"  qdrant edge built in {out['build_seconds']['qdrant_edge']} s")

        # --- baseline 1: llama-index QdrantVectorStore over qdrant-client local mode --------
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores.types import (
            FilterOperator,
            MetadataFilter,
            MetadataFilters,
            VectorStoreQuery,
            VectorStoreQueryMode,
        )
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        def sparse_fn(encode):
            def fn(batch_texts):
                vecs = [encode(t) for t in batch_texts]
                return [list(v.indices) for v in vecs], [list(v.values) for v in vecs]
            return fn

        t0 = time.perf_counter()
        local_client = QdrantClient(path=str(work / "local"))
        llama = QdrantVectorStore(
            "bench", client=local_client, enable_hybrid=True, batch_size=512,
            sparse_doc_fn=sparse_fn(bm25.document), sparse_query_fn=sparse_fn(bm25.query),
        )
        nodes = [
            TextNode(id_=ids[i], text=texts[i], embedding=vectors[i].tolist(), metadata={"groups": groups[i]})
            for i in range(n)
        ]
        llama.add(nodes)
        del nodes
        out["build_seconds"]["llamaindex_qdrant_local"] = round(time.perf_counter() - t0, 1)
        console.print(f"  llama-index + local mode built in {out['build_seconds']['llamaindex_qdrant_local']} s")

        # --- baseline 2: Chroma PersistentClient --------------------------------------------
        import chromadb

        t0 = time.perf_counter()
        chroma = chromadb.PersistentClient(path=str(work / "chroma"),
                                           settings=chromadb.Settings(anonymized_telemetry=False))
        col = chroma.create_collection("bench", metadata={"hnsw:space": "cosine"})
        step = 5000
        for s in range(0, n, step):
            e = min(n, s + step)
            col.add(ids=ids[s:e], embeddings=vectors[s:e],
                    metadatas=[{g: True for g in groups[i]} for i in range(s, e)])
        out["build_seconds"]["chroma"] = round(time.perf_counter() - t0, 1)
        console.print(f"  chroma built in {out['build_seconds']['chroma']} s")

        id_index = {pid: i for i, pid in enumerate(ids)}
        settings = Settings()  # the search breadth the product's Retriever sends
        ef, hybrid_ef = settings.retrieval_hnsw_ef, settings.retrieval_hybrid_hnsw_ef
        for label, principal in _principals().items():
            mask = np.array([bool(set(g) & set(principal.groups)) for g in groups])
            acl = build_acl_filter(principal)
            row: dict = {"fraction_readable": round(float(mask.mean()), 4)}
            truth = [_exact_topk(vectors, mask, q) for q in qvecs]

            def measure(fn, m):
                for qi in range(min(3, m)):  # warm-up, untimed: a service runs warm
                    fn(qi)
                lat, rec = [], []
                for qi in range(m):
                    t = time.perf_counter()
                    got = fn(qi)
                    lat.append((time.perf_counter() - t) * 1000)
                    if got is not None:
                        exp = set(truth[qi])
                        rec.append(len(exp & set(got)) / max(1, len(exp)))
                return {
                    "p50_ms": round(statistics.median(lat), 2),
                    "p95_ms": round(float(np.percentile(lat, 95, method="nearest")), 2),
                    "recall_at_10": round(statistics.mean(rec), 4) if rec else None,
                    "queries": m,
                }

            def edge_hybrid(qi):
                edge.query(StoreQuery(filter=acl, limit=K, dense=qvecs[qi].tolist(), sparse=bm25.query(qtexts[qi]), hnsw_ef=hybrid_ef))
                return None

            def edge_dense(qi):
                hits = edge.query(StoreQuery(filter=acl, limit=K, dense=qvecs[qi].tolist(), hnsw_ef=ef))
                return [id_index[h.id] for h in hits]

            lfilter = MetadataFilters(filters=[MetadataFilter(key="groups", value=list(principal.groups), operator=FilterOperator.IN)])

            def llama_hybrid(qi):
                llama.query(VectorStoreQuery(query_embedding=qvecs[qi].tolist(), query_str=qtexts[qi],
                                             similarity_top_k=K, sparse_top_k=K, mode=VectorStoreQueryMode.HYBRID,
                                             filters=lfilter))
                return None

            def llama_dense(qi):
                res = llama.query(VectorStoreQuery(query_embedding=qvecs[qi].tolist(), similarity_top_k=K, filters=lfilter))
                return [id_index[i] for i in res.ids]

            where = ({principal.groups[0]: True} if len(principal.groups) == 1
                     else {"$or": [{g: True} for g in principal.groups]})

            def chroma_dense(qi):
                res = col.query(query_embeddings=[qvecs[qi]], n_results=K, where=where, include=[])
                return [id_index[i] for i in res["ids"][0]]

            row["qdrant_edge_hybrid"] = measure(edge_hybrid, queries)
            row["qdrant_edge_dense"] = measure(edge_dense, queries)
            row["llamaindex_local_hybrid"] = measure(llama_hybrid, slow_queries)
            row["llamaindex_local_dense"] = measure(llama_dense, slow_queries)
            row["chroma_dense"] = measure(chroma_dense, queries)
            row["ratios"] = {
                "local_hybrid_p50_over_edge_hybrid_p50": round(row["llamaindex_local_hybrid"]["p50_ms"] / row["qdrant_edge_hybrid"]["p50_ms"], 1),
                "chroma_dense_p50_over_edge_hybrid_p50": round(row["chroma_dense"]["p50_ms"] / row["qdrant_edge_hybrid"]["p50_ms"], 1),
                "chroma_dense_p50_over_edge_dense_p50": round(row["chroma_dense"]["p50_ms"] / row["qdrant_edge_dense"]["p50_ms"], 1),
            }
            out["selectivity"][label] = row
            console.print(f"  {label}: edge hybrid p50 {row['qdrant_edge_hybrid']['p50_ms']} ms, "
                          f"local hybrid p50 {row['llamaindex_local_hybrid']['p50_ms']} ms, "
                          f"chroma p50 {row['chroma_dense']['p50_ms']} ms; recall edge "
                          f"{row['qdrant_edge_dense']['recall_at_10']} chroma {row['chroma_dense']['recall_at_10']}")
        edge.close()
        local_client.close()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_retrieval_results(results: dict, console: Console) -> None:
    short = {
        "qdrant_edge_hybrid": "ours: edge hybrid",
        "qdrant_edge_dense": "ours: edge dense",
        "llamaindex_local_hybrid": "llama-index local hybrid",
        "llamaindex_local_dense": "llama-index local dense",
        "chroma_dense": "chroma dense",
    }
    for n, data in results["sizes"].items():
        table = Table(title=f"filtered top-{results['k']}, {int(n):,} chunks")
        for col in ("filter (readable)", "store / query", "p50 ms", "p95 ms", "recall@10"):
            table.add_column(col, justify="left" if col.startswith(("filter", "store")) else "right")
        for label, row in data["selectivity"].items():
            for store, name in short.items():
                m = row[store]
                table.add_row(f"{label} ({row['fraction_readable']:.1%})", name, str(m["p50_ms"]),
                              str(m["p95_ms"]), "-" if m["recall_at_10"] is None else str(m["recall_at_10"]))
        console.print(table)
        for label, row in data["selectivity"].items():
            console.print(f"  ratios {label}: " + ", ".join(f"{k} {v}x" for k, v in row["ratios"].items()))
        console.print(f"  build seconds: {data['build_seconds']}")
