"""The audit log: one JSON line per answer or operator action, append-only, rotated by size and
never deleted.

Every record has one shape (`AuditRecord`): `at`, `kind` (`answer` or `operator`), `endpoint`,
`user`, then the fields of its kind. An answer record holds who asked, what, the retrieval query, the passages retrieved for that user (ids,
versions, scores: never text, and only passages that user may read), the answer as shown, the
versions used and the latency. Appends take an exclusive flock, so the service and a CLI `ask`
running at once neither interleave lines nor lose a record during rotation; each line is written
with one `write` and flushed to disk before the answer is returned.

Files: `audit.jsonl` (current) and `audit.000001.jsonl`, `audit.000002.jsonl`, … (rotated, oldest
first). Rotation only renames: no record is ever deleted by the service, so a user who floods the
log fills the disk instead of erasing the trail. Past `audit_alert_bytes` in all, every rotation
logs a warning and `/metrics` shows the size (`policyrag_audit_bytes`); an operator archives old
files. (`audit.jsonl.N` files of the earlier numbering, N = 1 newest, are still read, first.)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.durable import write_all
from core.settings import Settings

CURRENT = "audit.jsonl"
_ROTATED = re.compile(r"^audit\.(\d+)\.jsonl$")
_OLD_ROTATED = re.compile(r"^audit\.jsonl\.(\d+)$")  # the earlier numbering: .1 is the newest
logger = logging.getLogger(__name__)


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
    def __init__(self, folder: Path, *, max_bytes: int = 20 * 1024 * 1024, alert_bytes: int = 1024**3) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.alert_bytes = alert_bytes
        self.torn_lines: list[str] = []  # of the last read()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        return cls(settings.audit_dir, max_bytes=settings.audit_max_bytes, alert_bytes=settings.audit_alert_bytes)

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
                    write_all(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        """Rename the current file to the next number; nothing is deleted (see the module doc)."""
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _ROTATED.match(p.name))]
        os.replace(self.path, self.folder / f"audit.{max(numbers, default=0) + 1:06d}.jsonl")
        size = self.size_bytes()
        if size > self.alert_bytes:
            logger.warning("the audit log holds %d bytes, over POLICYRAG_AUDIT_ALERT_BYTES (%d): archive the oldest "
                           "files of %s (records are never deleted by the service)", size, self.alert_bytes, self.folder)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def files(self) -> list[Path]:
        """Oldest first."""
        old, rotated = [], []
        for p in self.folder.glob("audit*") if self.folder.exists() else ():
            if m := _OLD_ROTATED.match(p.name):
                old.append((-int(m.group(1)), p))
            elif m := _ROTATED.match(p.name):
                rotated.append((int(m.group(1)), p))
        return [p for _, p in sorted(old)] + [p for _, p in sorted(rotated)] + ([self.path] if self.path.exists() else [])

    def read(self, *, user: str | None = None, since: dt.datetime | None = None,
             until: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """Records oldest first, filtered by user and by time (`since` <= at < `until`), read one
        line at a time. A torn line (a write cut short by a crash) is skipped and named in
        `torn_lines` (`file:line`), not fatal: the records around it are still read."""
        self.torn_lines = []
        for path in self.files():
            with open(path, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        record["at"]  # a record without its time is torn too
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.torn_lines.append(f"{path.name}:{number}")
                        logger.warning("audit log %s line %d is torn (cut short); skipped", path, number)
                        continue
                    record.setdefault("kind", "answer" if "answer" in record else "operator")  # written before `kind`
                    if user is not None and record.get("user") != user:
                        continue
                    at = dt.datetime.fromisoformat(record["at"])
                    if since is not None and at < since:
                        continue
                    if until is not None and at >= until:
                        continue
                    yield record
