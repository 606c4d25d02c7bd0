"""Qdrant server / distributed cluster backend through qdrant-client (`:memory:` = in-process)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from core.errors import StoreError
from retrieval.acl import StoreFilter
from retrieval.store import (
    DENSE,
    DENSE_DIM,
    INDEXED_FIELDS,
    SPARSE,
    ScoredChunk,
    StoredPoint,
    StoreQuery,
    store_boundary,
)

logger = logging.getLogger(__name__)


def to_qdrant_filter(store_filter: StoreFilter) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
            for c in store_filter.must
        ]
    )


class ServerStore:
    """Usage: `ServerStore("http://localhost:6333", "policies")` or `ServerStore(":memory:", ...)`."""

    def __init__(self, url: str, collection: str, *, api_key: str | None = None,
                 shard_number: int | None = None, replication_factor: int | None = None,
                 write_consistency_factor: int | None = None) -> None:
        self.collection = collection
        # the cluster layout of a new collection; unset values are left to the server's defaults
        layout = {
            name: value
            for name, value in (
                ("shard_number", shard_number),
                ("replication_factor", replication_factor),
                ("write_consistency_factor", write_consistency_factor),
            )
            if value is not None
        }
        try:
            if url == ":memory:":
                self.client = QdrantClient(location=":memory:")
            else:
                self.client = QdrantClient(url=url, api_key=api_key, timeout=30)
            if not self.client.collection_exists(collection):
                self.client.create_collection(
                    collection,
                    vectors_config={
                        DENSE: models.VectorParams(size=DENSE_DIM, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config={
                        SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                    **layout,
                )
            elif layout:
                self._warn_on_other_layout(layout)
            present = self.indexed_fields()
            with warnings.catch_warnings():
                # in-process mode warns that it keeps no indexes; a real server builds them
                warnings.simplefilter("ignore", UserWarning)
                for name in INDEXED_FIELDS:
                    if name not in present:
                        self.client.create_payload_index(
                            collection, name, models.PayloadSchemaType.KEYWORD, wait=True
                        )
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"cannot reach the Qdrant store at {url} (collection {collection!r}): {exc}; "
                "check POLICYRAG_STORE_URL"
            ) from exc

    def _warn_on_other_layout(self, layout: dict[str, int]) -> None:
        """An existing collection keeps the layout it was created with: say so when it differs."""
        params = self.client.get_collection(self.collection).config.params
        for name, wanted in layout.items():
            actual = getattr(params, name, None)
            if actual is not None and actual != wanted:
                # shard_number is fixed at creation; replication and write consistency can be changed
                # on the server (update_collection), which this store never does on its own
                logger.warning(
                    "collection %r has %s=%s, not the configured %s; the setting applies only when the "
                    "collection is created", self.collection, name, actual, wanted,
                )

    def upsert(self, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        self.client.upsert(
            self.collection,
            points=[
                models.PointStruct(
                    id=p.id,
                    vector={
                        DENSE: p.dense,
                        SPARSE: models.SparseVector(
                            indices=list(p.sparse.indices), values=list(p.sparse.values)
                        ),
                    },
                    payload=p.payload,
                )
                for p in points
            ],
            wait=True,
        )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def scroll(self, fields: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                offset=offset,
                limit=1000,
                with_payload=list(fields) if fields else False,
                with_vectors=False,
            )
            for record in records:
                yield str(record.id), dict(record.payload or {})
            if offset is None:
                return

    @store_boundary
    def query(self, request: StoreQuery) -> list[ScoredChunk]:
        acl = to_qdrant_filter(request.filter)
        params = models.SearchParams(exact=request.exact, hnsw_ef=request.hnsw_ef)
        sparse = (
            models.SparseVector(
                indices=list(request.sparse.indices), values=list(request.sparse.values)
            )
            if request.sparse is not None
            else None
        )
        with_vectors = [DENSE] if request.with_dense else False
        if request.dense is not None and sparse is not None:
            result = self.client.query_points(
                self.collection,
                prefetch=[
                    models.Prefetch(
                        query=request.dense, using=DENSE, filter=acl, limit=request.candidates, params=params
                    ),
                    models.Prefetch(
                        query=sparse, using=SPARSE, filter=acl, limit=request.candidates, params=params
                    ),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=request.rrf_k)),
                query_filter=acl,
                limit=request.limit,
                with_payload=True,
                with_vectors=with_vectors,
            )
        else:
            result = self.client.query_points(
                self.collection,
                query=request.dense if request.dense is not None else sparse,
                using=DENSE if request.dense is not None else SPARSE,
                query_filter=acl,
                search_params=params,
                limit=request.limit,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [
            ScoredChunk(
                id=str(p.id),
                score=p.score,
                payload=dict(p.payload or {}),
                dense=list(p.vector[DENSE]) if request.with_dense and p.vector else None,
            )
            for p in result.points
        ]

    @store_boundary
    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def indexed_fields(self) -> set[str]:
        return set(self.client.get_collection(self.collection).payload_schema or {})

    def flush(self) -> None:
        """Server writes are acknowledged with wait=True; nothing to flush."""

    def unindexed(self) -> int:
        """A Qdrant server runs its own optimizers (and local mode has no HNSW): nothing to do."""
        return 0

    def optimize(self) -> None:
        """See `unindexed`."""

    def close(self) -> None:
        self.client.close()
