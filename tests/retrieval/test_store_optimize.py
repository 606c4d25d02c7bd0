"""Qdrant Edge never builds its HNSW by itself: `unindexed` counts what lacks it, `optimize` builds
it, and the access filter and the answers hold across it. Ingest optimizes past a threshold."""

import uuid

import numpy as np
import pytest

from retrieval.acl import FieldMatch, StoreFilter
from retrieval.embed import SparseEncoder
from retrieval.store import StoredPoint, StoreQuery
from retrieval.store_edge import EdgeStore

N = 12_000  # enough for Edge's optimizer to build an HNSW segment (its indexing threshold)


def only(group):
    return StoreFilter(must=(FieldMatch("groups", (group,)),))


def test_optimize_indexes_every_point_and_keeps_answers_and_access(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bm25 = SparseEncoder()
    ids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    group = ["hr" if i % 3 == 0 else "all" for i in range(N)]
    store = EdgeStore(tmp_path / "edge")
    try:
        for s in range(0, N, 3000):
            store.upsert([StoredPoint(ids[i], vectors[i].tolist(), bm25.document(f"rule {i % 40} clause {i}"),
                                      {"groups": [group[i]], "region": "global", "doc_id": f"d{i}",
                                       "citation_id": f"d{i}@v1#c0", "text": f"clause {i}"})
                          for i in range(s, min(N, s + 3000))])
        assert store.unindexed() == N

        def search(i, who, hybrid):
            sparse = bm25.query(f"rule {i % 40}") if hybrid else None
            return [h.id for h in store.query(StoreQuery(filter=only(who), limit=5, dense=vectors[i].tolist(), sparse=sparse))]

        probes = [(i, who, hybrid) for i in range(0, 300, 7) for who in ("all", "hr") for hybrid in (False, True)]
        before = {p: search(*p) for p in probes}
        store.optimize()
        assert store.unindexed() == 0
        for (i, who, hybrid), hits in before.items():
            after = search(i, who, hybrid)
            assert len(after) == 5 and all(group[int(uuid.UUID(h)) - 1] == who for h in after)  # the filter holds in HNSW
            if group[i] == who and not hybrid:  # a point's own vector finds it first, before and after
                assert hits[0] == after[0] == ids[i]
    finally:
        store.close()


@pytest.mark.parametrize("threshold, optimized", [(1, True), (0, False), (10**6, False)])
def test_ingest_optimizes_once_enough_points_lack_the_index(tmp_path, make_ingestor, backend, threshold, optimized):
    from tests.conftest import write_policy

    root = tmp_path / "docs"
    write_policy(root, "conduct.md", doc_id="conduct", body="## 1. Respect\n\nTreat colleagues with respect.")
    report = make_ingestor(store_optimize_min_points=threshold).run(root)
    assert report.ok and report.chunks_written
    # a Qdrant server (or local mode) indexes by itself: ingest never asks it to
    assert ("optimize" in report.stage_seconds) == (optimized and backend == "edge")
