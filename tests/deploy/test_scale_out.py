"""The Qdrant cluster layout settings (store_shard_number, store_replication_factor,
store_write_consistency_factor) reach qdrant-client's create_collection.

qdrant-client's local mode (`:memory:`, what the suite uses for the server backend) accepts these
arguments but ignores them: get_collection reports None for all three. So the call is observed
with a spy that records the keyword arguments and then runs the real method on the real client.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from pydantic import ValidationError
from qdrant_client import QdrantClient

from core.settings import Settings
from retrieval.embed import SparseVector
from retrieval.store import DENSE_DIM, StoredPoint
from retrieval.store_factory import open_store

LAYOUT = {"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 1}


@pytest.fixture
def create_calls(monkeypatch) -> list[dict]:
    """Keyword arguments of every create_collection call; the real method still runs."""
    calls: list[dict] = []
    real = QdrantClient.create_collection

    def spy(self, collection_name, **kwargs):
        calls.append({"collection_name": collection_name, **kwargs})
        return real(self, collection_name, **kwargs)

    monkeypatch.setattr(QdrantClient, "create_collection", spy)
    return calls


def server_settings(tmp_path, **layout) -> Settings:
    return Settings(data_dir=tmp_path / "data", store_url=":memory:", collection=f"c{uuid.uuid4().hex}", **layout)


def a_point() -> StoredPoint:
    return StoredPoint(str(uuid.uuid4()), [1.0] + [0.0] * (DENSE_DIM - 1), SparseVector((3,), (1.0,)),
                       {"doc_id": "d", "groups": ["all-staff"], "region": "global", "citation_id": "d@v1#c0"})


def test_the_cluster_layout_is_passed_to_create_collection(tmp_path, create_calls):
    settings = server_settings(
        tmp_path, store_shard_number=6, store_replication_factor=2, store_write_consistency_factor=1
    )
    store = open_store(settings)
    try:
        [call] = create_calls
        assert call["collection_name"] == settings.collection
        assert {k: call.get(k) for k in LAYOUT} == LAYOUT
        # the collection was really created by that call and works as a store
        assert store.client.collection_exists(settings.collection)
        store.upsert([a_point()])
        assert store.count() == 1
    finally:
        store.close()


def test_an_unset_layout_leaves_the_server_defaults(tmp_path, create_calls):
    store = open_store(server_settings(tmp_path))
    try:
        [call] = create_calls
        assert not set(LAYOUT) & set(call)  # not even as None: the server picks its defaults
    finally:
        store.close()


def test_only_the_layout_values_that_are_set_are_passed(tmp_path, create_calls):
    store = open_store(server_settings(tmp_path, store_replication_factor=3))
    try:
        [call] = create_calls
        assert call["replication_factor"] == 3
        assert "shard_number" not in call and "write_consistency_factor" not in call
    finally:
        store.close()


def test_the_layout_settings_are_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYRAG_STORE_URL", "http://qdrant:6333")
    monkeypatch.setenv("POLICYRAG_STORE_SHARD_NUMBER", "6")
    monkeypatch.setenv("POLICYRAG_STORE_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("POLICYRAG_STORE_WRITE_CONSISTENCY_FACTOR", "2")
    settings = Settings(data_dir=tmp_path)
    assert (settings.store_shard_number, settings.store_replication_factor,
            settings.store_write_consistency_factor) == (6, 2, 2)


def test_a_layout_without_a_server_url_is_refused(tmp_path):
    # Qdrant Edge (store_url unset) has no shards: the setting would be silently ignored
    with pytest.raises(ValidationError) as info:
        Settings(data_dir=tmp_path, store_shard_number=6)
    assert "store_shard_number" in str(info.value) and "POLICYRAG_STORE_URL" in str(info.value)


def test_a_write_consistency_above_the_replication_factor_is_refused(tmp_path):
    with pytest.raises(ValidationError) as info:
        Settings(data_dir=tmp_path, store_url=":memory:", store_replication_factor=2,
                 store_write_consistency_factor=3)
    assert "store_write_consistency_factor (3)" in str(info.value)


@pytest.mark.parametrize("name", ["store_shard_number", "store_replication_factor", "store_write_consistency_factor"])
def test_a_layout_value_below_one_is_refused(tmp_path, name):
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, store_url=":memory:", **{name: 0})


def test_an_existing_collection_with_another_layout_is_reported(tmp_path, monkeypatch, caplog):
    # A collection keeps the layout it was created with. Local mode reports none, so the real
    # get_collection answer is edited to say "3 shards", as a server would; the check is called
    # directly because every `:memory:` store starts with an empty client of its own.
    store = open_store(server_settings(tmp_path, store_shard_number=6))
    real = QdrantClient.get_collection

    def three_shards(self, collection_name, **kwargs):
        info = real(self, collection_name, **kwargs)
        info.config.params.shard_number = 3
        return info

    monkeypatch.setattr(QdrantClient, "get_collection", three_shards)
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.store_server"):
            store._warn_on_other_layout({"shard_number": 6, "replication_factor": 2})
    finally:
        store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("shard_number=3" in m and "configured 6" in m for m in messages)
    assert not any("replication_factor" in m for m in messages)  # None reported: nothing to compare
