"""What one ingest run did, per document and per stage (printed by `policyrag ingest`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.errors import DocumentRejected


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[DocumentRejected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0
    pii: dict[str, dict[str, int]] = field(default_factory=dict)
    embed_calls: int = 0
    texts_embedded: int = 0
    seconds: float = 0.0
    # time spent in each stage; "pii" and "chunk" run in a thread beside "embed_dense" (each key is
    # only ever written from one thread), so the stages can add up to more than `seconds`
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, started: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - started

    @property
    def ok(self) -> bool:
        return not self.rejected

    @property
    def pii_total(self) -> int:
        return sum(sum(c.values()) for c in self.pii.values())

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "superseded": self.superseded,
            "unchanged": len(self.unchanged),
            "rejected": [{"path": r.path, "reason": r.reason, "message": r.message} for r in self.rejected],
            "skipped": self.skipped,
            "recovered": self.recovered,
            "chunks_written": self.chunks_written,
            "chunks_deleted": self.chunks_deleted,
            "pii_redactions": self.pii,
            "embed_calls": self.embed_calls,
            "texts_embedded": self.texts_embedded,
            "seconds": round(self.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in sorted(self.stage_seconds.items())},
        }
