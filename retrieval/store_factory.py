"""`open_store`: the backend the settings ask for (a module of its own, so that the backends can
import the protocol's types without an import cycle)."""

from __future__ import annotations

from core.settings import Settings
from retrieval.store import Store


def open_store(settings: Settings) -> Store:
    if settings.store_url:
        from retrieval.store_server import ServerStore

        return ServerStore(
            settings.store_url, settings.collection, api_key=settings.store_api_key,
            shard_number=settings.store_shard_number,
            replication_factor=settings.store_replication_factor,
            write_consistency_factor=settings.store_write_consistency_factor,
        )
    from retrieval.store_edge import EdgeStore

    return EdgeStore(settings.index_dir / settings.collection)
