"""The audit log: one JSON line per answer or operator action, append-only, rotated by size.

Every record has one shape (`AuditRecord`): `at`, `kind` (`answer` or `operator`), `endpoint`,
`user`, then the fields of its kind. An answer record holds who asked, what, the retrieval query, the passages retrieved for that user (ids,
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.settings import Settings

CURRENT = "audit.jsonl"


class AuditRecord(BaseModel):
    """One line of the audit log. Answer records come from the pipeline; operator records from
    commands that change what is served (`adapters promote`)."""

    model_config = ConfigDict(extra="forbid")

    at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"))
    kind: Literal["answer", "operator"]
    endpoint: str
    user: str
    # answer records
    request_id: str | None = None
    conversation_id: str | None = None
    question: str | None = None
    query: str | None = None
    passages: list[dict[str, Any]] | None = Field(None, description="ids, versions and scores: never passage text")
    answer: str | None = None
    status: str | None = None
    reason: str | None = None
    repairs: list[str] | None = None
    versions: dict[str, Any] | None = None
    latency_ms: dict[str, float] | None = None
    usage: dict[str, int] | None = None
    # operator records
    action: str | None = None
    version: str | None = None
    previous: str | None = None
    forced: bool | None = None
    gate_failures: list[str] | None = None

    def line(self) -> bytes:
        data = self.model_dump(exclude_none=True)
        for name in _SHOWN_WHEN_NULL[self.kind]:  # part of the kind's shape even when empty
            data.setdefault(name, None)
        return (json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


_SHOWN_WHEN_NULL = {"answer": ("conversation_id", "reason"), "operator": ("previous", "reason")}


def operator_record(*, endpoint: str, user: str, action: str, version: str, previous: str | None = None,
                    forced: bool = False, gate_failures: list[str] | None = None,
                    reason: str | None = None) -> AuditRecord:
    return AuditRecord(kind="operator", endpoint=endpoint, user=user, action=action, version=version,
                       previous=previous, forced=forced, gate_failures=gate_failures or [], reason=reason)


class AuditLog:
    def __init__(self, folder: Path, *, max_bytes: int = 20 * 1024 * 1024, backups: int = 20) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        return cls(settings.audit_dir, max_bytes=settings.audit_max_bytes, backups=settings.audit_backups)

    @property
    def path(self) -> Path:
        return self.folder / CURRENT

    def append(self, record: AuditRecord) -> None:
        line = record.line()
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
                    record.setdefault("kind", "answer" if "answer" in record else "operator")  # written before `kind`
                    if user is not None and record.get("user") != user:
                        continue
                    at = dt.datetime.fromisoformat(record["at"])
                    if since is not None and at < since:
                        continue
                    if until is not None and at >= until:
                        continue
                    yield record
