"""The ingest manifest: what is in the store, per document version, plus history and a journal.

SQLite (one file under the data directory), so each state change is one atomic transaction.
Crash safety: before touching the store for a document, a journal row records the point ids
about to be written and the ones about to be removed. The row is deleted in the same transaction
that records the new state. A journal row found at start-up means a run died in between: both
id sets are deleted from the store and the document's current row is dropped, so this run
re-ingests it from its file (or leaves it deleted if the file is gone). No orphan chunks, no
missing chunks.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ingest.documents import DocumentMeta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('current', 'superseded')),
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    default_groups TEXT,
    meta_json TEXT NOT NULL,
    point_ids_json TEXT NOT NULL DEFAULT '[]',
    pii_json TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (doc_id, version)
);
CREATE INDEX IF NOT EXISTS documents_path ON documents (path);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL,
    version TEXT NOT NULL,
    event TEXT NOT NULL,
    path TEXT,
    content_hash TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    doc_id TEXT PRIMARY KEY,
    old_ids_json TEXT NOT NULL,
    new_ids_json TEXT NOT NULL,
    started_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ManifestRow:
    doc_id: str
    version: str
    status: str
    path: str
    content_hash: str
    default_groups: str | None
    meta: DocumentMeta
    point_ids: tuple[str, ...]
    pii: dict[str, int]


@dataclass(frozen=True)
class JournalEntry:
    doc_id: str
    old_ids: tuple[str, ...]
    new_ids: tuple[str, ...]


class Manifest:
    """Usage: `with Manifest(path) as m: m.current()`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # --- reads -------------------------------------------------------------------------------
    def rows(self, status: str | None = None) -> list[ManifestRow]:
        sql = "SELECT * FROM documents" + (" WHERE status = ?" if status else "")
        cur = self.db.execute(sql + " ORDER BY doc_id, version", (status,) if status else ())
        return [_row(cur.description, r) for r in cur.fetchall()]

    def current(self) -> dict[str, ManifestRow]:
        return {row.doc_id: row for row in self.rows("current")}

    def by_path(self) -> dict[str, list[ManifestRow]]:
        out: dict[str, list[ManifestRow]] = {}
        for row in self.rows():
            out.setdefault(row.path, []).append(row)
        return out

    def journal(self) -> list[JournalEntry]:
        cur = self.db.execute("SELECT doc_id, old_ids_json, new_ids_json FROM journal")
        return [
            JournalEntry(d, tuple(json.loads(o)), tuple(json.loads(n))) for d, o, n in cur.fetchall()
        ]

    def history(self, doc_id: str | None = None) -> list[dict]:
        sql = "SELECT doc_id, version, event, path, content_hash, at FROM history"
        args: tuple = ()
        if doc_id:
            sql, args = sql + " WHERE doc_id = ?", (doc_id,)
        cur = self.db.execute(sql + " ORDER BY seq", args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def committed_point_ids(self) -> set[str]:
        ids: set[str] = set()
        for row in self.rows("current"):
            ids.update(row.point_ids)
        return ids

    # --- writes ------------------------------------------------------------------------------
    def begin_journal(self, entries: Iterable[JournalEntry]) -> None:
        now = _now()
        with _txn(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?)",
                [(e.doc_id, json.dumps(e.old_ids), json.dumps(e.new_ids), now) for e in entries],
            )

    def commit_changes(
        self,
        *,
        upserts: Iterable[ManifestRow] = (),
        removals: Iterable[tuple[str, str]] = (),
        events: Iterable[tuple[str, str, str, str | None, str | None]] = (),
        journal_done: Iterable[str] = (),
    ) -> None:
        """One transaction: new rows, removed (doc_id, version) rows, history events, and the
        journal rows they settle."""
        now = _now()
        with _txn(self.db):
            for doc_id, version in removals:
                self.db.execute(
                    "DELETE FROM documents WHERE doc_id = ? AND version = ?", (doc_id, version)
                )
            for row in upserts:
                self.db.execute(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.doc_id,
                        row.version,
                        row.status,
                        row.path,
                        row.content_hash,
                        row.default_groups,
                        row.meta.model_dump_json(),
                        json.dumps(list(row.point_ids)),
                        json.dumps(row.pii),
                        now,
                    ),
                )
            self.db.executemany(
                "INSERT INTO history (doc_id, version, event, path, content_hash, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(*e, now) for e in events],
            )
            self.db.executemany("DELETE FROM journal WHERE doc_id = ?", [(d,) for d in journal_done])

    def drop_current(self, doc_id: str) -> None:
        with _txn(self.db):
            self.db.execute(
                "DELETE FROM documents WHERE doc_id = ? AND status = 'current'", (doc_id,)
            )


class _txn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _row(description, values) -> ManifestRow:
    d = dict(zip((c[0] for c in description), values))
    return ManifestRow(
        doc_id=d["doc_id"],
        version=d["version"],
        status=d["status"],
        path=d["path"],
        content_hash=d["content_hash"],
        default_groups=d["default_groups"],
        meta=DocumentMeta.model_validate_json(d["meta_json"]),
        point_ids=tuple(json.loads(d["point_ids_json"])),
        pii=json.loads(d["pii_json"]),
    )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
