"""Free disk space under the data directory, checked before the index is written."""

from __future__ import annotations

import shutil

from core.errors import DiskFull
from core.settings import Settings


def ensure_free_space(settings: Settings, need_bytes: int, what: str) -> None:
    """Refuse a write that would leave less than `ingest_min_free_mb` free under the data dir.

    Qdrant Edge memory-maps its segment and WAL files; when the disk fills under a write to a
    mapped page the process dies of SIGBUS instead of getting an error, so the space is checked
    before each batch. Batches already written stay committed (manifest and store agree)."""
    folder = settings.data_dir
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    floor = settings.ingest_min_free_mb * 1024 * 1024
    if free - need_bytes < floor:
        raise DiskFull(
            f"only {free / 2**20:.0f} MiB free under {settings.data_dir}: too little to {what} and keep "
            f"{settings.ingest_min_free_mb} MiB free (POLICYRAG_INGEST_MIN_FREE_MB); free some space or move "
            "POLICYRAG_DATA_DIR, then run `policyrag ingest` again: what was indexed so far is kept and consistent"
        )
