"""The `Store` protocol over the vector store and the values it takes and returns
(`retrieval/store_factory.py` picks a backend).

Two real backends keep the same behaviour: Qdrant Edge in-process (`store_edge.py`, the embedded
default, persisted under the data directory) and a Qdrant server or cluster through qdrant-client
(`store_server.py`, selected by `POLICYRAG_STORE_URL`; `:memory:` runs qdrant-client's
in-process mode, used in tests).

One point per chunk; named vectors `dense` (384-d cosine) and `sparse` (BM25 terms, IDF applied
by the store). The payload is a `ChunkPayload` (written by ingest, validated where it is read:
the retriever, tuning's pair builder, the eval runner); the keyword fields in `INDEXED_FIELDS`
(everything the access filter uses) get a payload index before data goes in.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from core.errors import PolicyRagError, StoreError
from retrieval.acl import StoreFilter
from retrieval.embed import DENSE_DIM, SparseVector

DENSE = "dense"
SPARSE = "sparse"
INDEXED_FIELDS = ("groups", "region", "doc_id", "version", "citation_id")


class ChunkPayload(BaseModel):
    """The payload of one point: one chunk of the current version of one document."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    doc_id: str
    version: str
    title: str
    effective_date: dt.date
    owner: str
    source: str  # the file, relative to the ingested folder
    section: tuple[str, ...]  # heading path
    section_path: str  # the same, joined for display
    chunk_index: int
    citation_id: str
    text: str
    start: int  # character span in the scrubbed document text
    end: int
    groups: tuple[str, ...]  # who may read it (retrieval/acl.py)
    region: str
    content_hash: str
    chunk_hash: str

    def to_store(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


PAYLOAD_FIELDS: tuple[str, ...] = tuple(ChunkPayload.model_fields)


def stored_chunks(store: Store) -> Iterator[ChunkPayload]:
    """Every indexed chunk, validated (audits, pair building, eval references; never a user path:
    nothing here is access-filtered)."""
    for _, payload in store.scroll(PAYLOAD_FIELDS):
        yield ChunkPayload.model_validate(payload)


@dataclass(frozen=True)
class StoreQuery:
    """One search. `filter` is mandatory: it is the access filter (plus narrowing) and every
    backend applies it inside the query and in each prefetch. Dense + sparse = hybrid (RRF)."""

    filter: StoreFilter
    limit: int
    dense: list[float] | None = None
    sparse: SparseVector | None = None
    candidates: int = 50  # per-prefetch depth of a hybrid query
    rrf_k: int = 60
    exact: bool = False  # brute force (benchmarks' reference)
    hnsw_ef: int | None = None  # HNSW search breadth; higher = better recall, slower
    with_dense: bool = False  # return the dense vectors (for the score floor and MMR)

    def __post_init__(self) -> None:
        if self.dense is None and self.sparse is None:
            raise ValueError("StoreQuery needs a dense vector, a sparse vector, or both")
        if self.limit < 1:
            raise ValueError(f"StoreQuery.limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class ScoredChunk:
    id: str
    score: float
    payload: dict[str, Any]
    dense: list[float] | None = None


@dataclass(frozen=True)
class StoredPoint:
    id: str
    dense: list[float]
    sparse: SparseVector
    payload: dict[str, Any]


class Store(Protocol):
    """What every stage may do with the index. Access filtering is the retriever's job and is
    applied inside each query it sends; nothing here returns chunks to a user."""

    def upsert(self, points: Sequence[StoredPoint]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def scroll(self, fields: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point id with the requested payload fields (for audits and consistency)."""
        ...

    def query(self, request: StoreQuery) -> list[ScoredChunk]: ...

    def count(self) -> int: ...

    def indexed_fields(self) -> set[str]: ...

    def flush(self) -> None: ...

    def unindexed(self) -> int:
        """Points whose dense vector no HNSW index holds yet (searched exhaustively)."""
        ...

    def optimize(self) -> None:
        """Build the indexes that `unindexed` counts; blocking."""
        ...

    def close(self) -> None: ...


F = TypeVar("F", bound=Callable[..., Any])


def store_boundary(method: F) -> F:
    """Translate a backend's own failure (the Qdrant Edge binding's or qdrant-client's: a closed
    shard, a refused connection) into `StoreError` (the service answers 503 `store_error` with
    Retry-After) instead of letting it reach a caller as a 500. Used on the calls a request makes."""

    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except PolicyRagError:
            raise
        except Exception as exc:
            raise StoreError(
                f"the vector store failed ({type(exc).__name__}: {exc}); check that the index is reachable "
                "(POLICYRAG_STORE_URL, or the index under POLICYRAG_DATA_DIR) and retry"
            ) from exc

    return translated  # type: ignore[return-value]


__all__ = [
    "DENSE",
    "DENSE_DIM",
    "SPARSE",
    "ChunkPayload",
    "PAYLOAD_FIELDS",
    "ScoredChunk",
    "Store",
    "StoreQuery",
    "StoredPoint",
    "store_boundary",
    "stored_chunks",
]
