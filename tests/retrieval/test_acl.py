"""The access filter is a security boundary: property-tested on both store backends."""

import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.acl import (
    NoGroups,
    Principal,
    SearchFilters,
    UnknownUser,
    build_acl_filter,
    may_read,
    resolve_principal,
)
from retrieval.directory import Directory
from retrieval.embed import SparseVector
from retrieval.retriever import Retriever
from retrieval.store import StoredPoint
from retrieval.store_edge import EdgeStore
from retrieval.store_server import ServerStore

GROUPS = ["all-staff", "hr", "managers", "legal", "security", "contractors"]
REGIONS = ["global", "UK", "US", "DE"]
VOCAB = list(range(40))


def unit(rng, dim=384):
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def sparse(rng):
    terms = sorted(rng.sample(VOCAB, rng.randint(1, 6)))
    return SparseVector(tuple(terms), tuple(rng.uniform(0.5, 2.0) for _ in terms))


@st.composite
def corpora(draw):
    n = draw(st.integers(1, 40))
    docs = []
    for i in range(n):
        docs.append({
            "groups": sorted(draw(st.sets(st.sampled_from(GROUPS), min_size=1, max_size=3))),
            "region": draw(st.sampled_from(REGIONS)),
            "doc_id": f"d{draw(st.integers(0, 6))}",
        })
    return docs


principals = st.builds(
    Principal,
    user_id=st.just("u"),
    groups=st.sets(st.sampled_from(GROUPS), min_size=1, max_size=3).map(lambda s: tuple(sorted(s))),
    region=st.sampled_from(REGIONS),
)
caller_filters = st.one_of(
    st.none(),
    st.builds(
        SearchFilters,
        doc_ids=st.one_of(st.none(), st.lists(st.sampled_from([f"d{i}" for i in range(7)]), max_size=3).map(tuple)),
        regions=st.one_of(st.none(), st.lists(st.sampled_from(REGIONS), min_size=1, max_size=2).map(tuple)),
        groups=st.one_of(st.none(), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2).map(tuple)),
    ),
)


def build_store(backend, tmp_path, docs, seed):
    rng = random.Random(seed)
    store = EdgeStore(tmp_path / f"edge-{uuid.uuid4().hex}") if backend == "edge" else ServerStore(":memory:", f"c{uuid.uuid4().hex}")
    points = []
    for i, d in enumerate(docs):
        payload = {
            "doc_id": d["doc_id"], "version": "1", "title": "T", "effective_date": "2025-01-01",
            "owner": "o", "source": "s.md", "section": ["1. S"], "section_path": "1. S",
            "chunk_index": i, "citation_id": f"{d['doc_id']}@v1#c{i}", "text": f"chunk {i}",
            "start": 0, "end": 1, "groups": d["groups"], "region": d["region"],
            "content_hash": "h", "chunk_hash": "h",
        }
        points.append(StoredPoint(str(uuid.uuid4()), unit(rng), sparse(rng), payload))
    store.upsert(points)
    return store, {p.payload["citation_id"]: p.payload for p in points}


def allowed(principal, payload, filters):
    if not set(principal.groups) & set(payload["groups"]):
        return False
    if principal.region != "global" and payload["region"] not in ("global", principal.region):
        return False
    if filters is not None:
        if filters.doc_ids is not None and payload["doc_id"] not in filters.doc_ids:
            return False
        if filters.regions is not None and payload["region"] not in filters.regions:
            return False
        if filters.groups is not None and not set(filters.groups) & set(payload["groups"]):
            return False
    return True


@pytest.mark.parametrize("backend_name", ["edge", "server"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=corpora(), principal=principals, filters=caller_filters,
       mode=st.sampled_from(["dense", "sparse", "hybrid"]), seed=st.integers(0, 10_000))
def test_no_passage_outside_the_principals_groups_and_region(tmp_path, backend_name, docs, principal, filters, mode, seed):
    store, payloads = build_store(backend_name, tmp_path, docs, seed)
    try:
        retriever = Retriever(store, embedder=None, directory=Directory(users={}), score_floor=-1.0,
                              duplicate_threshold=1.01)
        rng = random.Random(seed + 1)
        dense = unit(rng) if mode in ("dense", "hybrid") else None
        sparse_q = SparseVector(tuple(VOCAB), tuple(1.0 for _ in VOCAB)) if mode in ("sparse", "hybrid") else None
        passages = retriever.search_vectors(dense, sparse_q, principal, k=10, filters=filters)
        for p in passages:
            assert allowed(principal, payloads[p.citation_id], filters), (p.citation_id, principal)
        # not vacuous: whenever something is readable, a query returns it
        readable = [c for c, pl in payloads.items() if allowed(principal, pl, filters)]
        if readable:
            assert passages
        else:
            assert passages == []
    finally:
        store.close()


def test_caller_filters_only_narrow():
    p = Principal("u", ("all-staff",), "UK")
    acl = build_acl_filter(p)
    narrowed = build_acl_filter(p, SearchFilters(groups=("hr",), regions=("US",)))
    assert set(acl.must) <= set(narrowed.must)  # the access conditions are all still there
    hr_us = {"groups": ["hr"], "region": "US"}
    assert not acl.matches(hr_us) and not narrowed.matches(hr_us)


def test_global_principal_reads_every_region_but_only_its_groups():
    f = build_acl_filter(Principal("h", ("hr",), "global"))
    assert f.matches({"groups": ["hr"], "region": "DE"})
    assert not f.matches({"groups": ["legal"], "region": "global"})


def test_unknown_user_and_user_without_groups_are_errors():
    directory = Directory.model_validate({"users": {
        "alice": {"groups": ["all-staff"], "region": "UK"},
        "ghost": {"groups": [], "region": "UK"}}})
    assert resolve_principal(directory, "alice").groups == ("all-staff",)
    with pytest.raises(UnknownUser, match="mallory"):
        resolve_principal(directory, "mallory")
    with pytest.raises(NoGroups, match="ghost"):
        resolve_principal(directory, "ghost")


@settings(max_examples=300, deadline=None)
@given(principal=principals, groups=st.sets(st.sampled_from(GROUPS), min_size=1, max_size=3), region=st.sampled_from(REGIONS))
def test_may_read_is_the_rule_the_store_query_enforces(principal, groups, region):
    """Eval's leak check and tuning's audience check ask `may_read`; it must agree with the
    independent statement of the rule that the store-query property test above uses."""
    payload = {"groups": sorted(groups), "region": region}
    assert may_read(principal, sorted(groups), region) == allowed(principal, payload, None)
