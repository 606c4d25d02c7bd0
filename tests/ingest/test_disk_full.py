"""The disk fills during ingest: a clean error naming the folder and what to do (not a crash: the
embedded store memory-maps its files, and a full disk under a mapped write is SIGBUS), what was
indexed before stays consistent, and a re-run after freeing space completes. A real small
filesystem (tmpfs) is mounted for it, so this needs root (CI and the dev machines run as root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from ingest.manifest import Manifest
from retrieval.store_factory import open_store
from tests.conftest import write_policy


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def ingest(folder: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "policyrag", "ingest", str(folder)], env=env,
                          capture_output=True, text=True, timeout=600)


def consistent(data: Path) -> tuple[int, int]:
    """(documents in the manifest, points in the store); every manifest point must be stored."""
    settings = Settings(data_dir=data)
    manifest = Manifest(settings.manifest_path)
    store = open_store(settings)
    try:
        rows = manifest.current()
        ids = {pid for row in rows.values() for pid in row.point_ids}
        stored = {pid for pid, _ in store.scroll()}
        assert ids == stored, "manifest and store disagree"
        return len(rows), len(stored)
    finally:
        store.close()
        manifest.close()


def test_a_full_disk_stops_ingest_cleanly_and_keeps_the_index_consistent(small_disk, tmp_path):
    body = "## 1. Rule\n\n" + "Staff must follow this rule in every office and region. " * 40
    docs = tmp_path / "docs"
    for n in range(3):
        write_policy(docs, f"p{n}.md", doc_id=f"policy-{n}", body=body)
    data = small_disk / "data"
    first = ingest(docs, data)
    assert first.returncode == 0, first.stderr[-2000:]
    assert consistent(data)[0] == 3

    # more documents arrive while the disk is nearly full: leave 1 MiB above the 128 MiB floor
    for n in range(3, 40):
        write_policy(docs, f"p{n}.md", doc_id=f"policy-{n}", body=body)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * int(free - 129 * 2**20))
    full = ingest(docs, data)
    assert full.returncode != 0 and full.returncode != -7 and full.returncode != 135, full.stderr[-2000:]  # no SIGBUS
    message = " ".join(full.stderr.split())
    assert "MiB free under" in message and str(data) in message and "POLICYRAG_INGEST_MIN_FREE_MB" in message
    assert consistent(data)[0] == 3  # nothing half-written

    filler.unlink()
    again = ingest(docs, data)
    assert again.returncode == 0, again.stderr[-2000:]
    assert consistent(data)[0] == 40


def test_no_room_to_even_open_the_index_is_a_clean_error(small_disk, tmp_path):
    docs = tmp_path / "docs"
    write_policy(docs, "p.md", doc_id="policy", body="## 1. Rule\n\nStaff must follow this rule.")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * int(free - 2 * 2**20))
    result = ingest(docs, small_disk / "data")
    assert result.returncode not in (0, 135, -7), result.stderr[-2000:]
    assert "too little to open the index" in " ".join(result.stderr.split())
