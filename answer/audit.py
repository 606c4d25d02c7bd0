"""The audit log: one JSON line per answer, append-only, rotated by size.

A record holds who asked, what, the retrieval query, the passages retrieved for that user (ids,
versions, scores: never text, and only passages that user may read), the answer as shown, the
versions used and the latency. Appends take an exclusive flock, so the service and a CLI `ask`
running at once neither interleave lines nor lose a record during rotation; each line is written
with one `write` and flushed to disk before the answer is returned.

Files: `audit.jsonl` (current), `audit.jsonl.1` (newest rotated) … `audit.jsonl.N`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CURRENT = "audit.jsonl"


class AuditLog:
    def __init__(self, folder: Path, *, max_bytes: int = 20 * 1024 * 1024, backups: int = 20) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups

    @property
    def path(self) -> Path:
        return self.folder / CURRENT

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        oldest = self.folder / f"{CURRENT}.{self.backups}"
        if oldest.exists():
            oldest.unlink()
        for n in range(self.backups - 1, 0, -1):
            src = self.folder / f"{CURRENT}.{n}"
            if src.exists():
                os.replace(src, self.folder / f"{CURRENT}.{n + 1}")
        os.replace(self.path, self.folder / f"{CURRENT}.1")

    def files(self) -> list[Path]:
        """Oldest first."""
        rotated = sorted(
            (p for p in self.folder.glob(f"{CURRENT}.*") if p.suffix.lstrip(".").isdigit()),
            key=lambda p: -int(p.suffix.lstrip(".")),
        )
        return rotated + ([self.path] if self.path.exists() else [])

    def read(self, *, user: str | None = None, since: dt.datetime | None = None,
             until: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """Records oldest first, filtered by user and by time (`since` <= at < `until`)."""
        for path in self.files():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if user is not None and record.get("user") != user:
                        continue
                    at = dt.datetime.fromisoformat(record["at"])
                    if since is not None and at < since:
                        continue
                    if until is not None and at >= until:
                        continue
                    yield record
