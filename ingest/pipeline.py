"""The ingest run: plan (ingest/plan.py), then scrub, chunk, embed, write store + manifest.

Change detection is keyed by (document id, version) and the content hash of the file (plus its
sidecar). Unchanged documents cost no parsing and no embedding. Only the current version of a
document has chunks in the store; older versions stay in the manifest as `superseded`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from core.errors import ConfigError, DocumentRejected
from core.settings import Settings
from ingest.ahead import map_ahead
from ingest.chunking import chunk_document
from ingest.disk_space import ensure_free_space
from ingest.documents import Chunk, LoadedDocument, PiiReport
from ingest.loaders import load_document
from ingest.manifest import JournalEntry, Manifest, ManifestRow
from ingest.pii import PiiScrubber
from ingest.plan import (
    IngestPlan,
    Work,
    as_superseded,
    manifest_row,
    plan_ingest,
    superseded_row,
)
from ingest.report import IngestReport
from ingest.sandbox import run_limited
from retrieval.directory import load_directory
from retrieval.embed import DenseEmbedder, SparseEncoder
from retrieval.store import ChunkPayload, Store, StoredPoint
from retrieval.store_factory import open_store

logger = logging.getLogger(__name__)

_POINT_NS = uuid.UUID("6f1c2b1e-94a4-4c55-9a51-6a1d1f3f0a11")
_BATCH_CHUNKS = 256  # chunks embedded and written per store/manifest transaction
_SCRUB_AHEAD_DOCS = 64  # documents scrubbed and chunked ahead of the batch being embedded
# a point's dense vector, sparse vector and index entries, beyond its text (payload, WAL, sparse)
_POINT_OVERHEAD_BYTES = 16 * 1024


ProgressFn = Callable[[int, int, str], None]


class Ingestor:
    """Usage: `Ingestor(settings).run(Path("policies"))`. Reuse one Ingestor for many runs
    (watch mode) so the models load once, and only when there is something to embed."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        embedder: DenseEmbedder | None = None,
        scrubber: PiiScrubber | None = None,
    ) -> None:
        from core.provision import embedding_model_path

        self.settings = settings
        if store is None and not settings.store_url:
            ensure_free_space(settings, 0, "open the index")  # creating the store writes its files
        self.store = store if store is not None else open_store(settings)
        self.manifest = Manifest(settings.manifest_path)
        self.embedder = embedder or DenseEmbedder(  # OpenVINO: 1.5x torch here, same weights
            embedding_model_path(settings),
            batch_size=settings.embed_batch_size,
            dtype=settings.embedding_dtype,
            backend="openvino",
            cache_dir=settings.models_dir,
            streams=settings.ingest_embed_streams,
        )
        self.scrubber = scrubber or PiiScrubber.from_settings(settings)
        self._sparse: SparseEncoder | None = None

    def close(self) -> None:
        self.store.close()
        self.manifest.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def run(
        self,
        root: Path,
        *,
        default_groups: Iterable[str] | None = None,
        today: dt.date | None = None,
        progress: ProgressFn | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        calls_before, texts_before = self.embedder.calls, self.embedder.texts_embedded
        root = root.resolve()
        if not root.is_dir():
            raise ConfigError(f"{root} is not a folder; pass the folder of policy documents")
        defaults = sorted({g.strip() for g in (default_groups or []) if g.strip()})
        today = today or dt.date.today()
        report = IngestReport()
        report.recovered = self._recover()

        known_groups = None
        if (root / "directory.yaml").exists():
            known_groups = load_directory(root / "directory.yaml").known_groups
        allow_extra = _read_allow_list(root / "pii-allowlist.txt")

        def load(path: Path) -> LoadedDocument | None:
            t0 = time.perf_counter()
            try:  # in a worker process under a memory and a time limit (ingest/sandbox.py)
                return run_limited(
                    self.settings,
                    path.relative_to(root).as_posix(),
                    load_document,
                    path,
                    root,
                    max_bytes=self.settings.max_file_bytes,
                    default_groups=defaults,
                    known_groups=known_groups,
                )
            finally:
                report.timed("load", t0)

        # 1-3. compare the folder with the manifest (ingest/plan.py)
        plan = plan_ingest(root, self.manifest, load, today)
        report.rejected += plan.rejected
        report.skipped = plan.skipped
        report.unchanged += plan.unchanged
        report.superseded += plan.superseded
        report.superseded += self._record_superseded(plan)
        work = plan.work

        # 4. apply, in batches: scrub -> chunk -> embed -> journal -> store -> manifest
        if any(item.new is not None for item in work):
            self.embedder.load()
        total = len(work)
        done = 0
        batch: list[tuple[Work, list[Chunk], PiiReport, LoadedDocument | None]] = []
        batch_chunks = 0
        if progress:
            progress(0, total, "")

        def prepare(item: Work) -> tuple[Work, list[Chunk], PiiReport, LoadedDocument | None]:
            if item.new is None:
                return item, [], PiiReport(), None
            t0 = time.perf_counter()
            scrubbed, pii = self.scrubber.scrub(item.new.text, extra_allow=allow_extra)
            report.timed("pii", t0)
            doc = replace(item.new, text=scrubbed)
            t0 = time.perf_counter()
            chunks = chunk_document(
                doc.meta.id, doc.meta.version, doc.meta.title, doc.text,
                max_chars=self.settings.chunk_max_chars,
            )
            report.timed("chunk", t0)
            return item, chunks, pii, doc

        # scrubbing runs in a thread, ahead of the embedding of the batch before (ingest/ahead.py);
        # closed explicitly on the way out, so an error in `_apply` stops it at once rather than
        # when the last reference to the iterator goes (≤ 64 queued documents scrubbed for nothing)
        with closing(map_ahead(prepare, work, depth=_SCRUB_AHEAD_DOCS)) as prepared:
            for item, chunks, pii, doc in prepared:
                if doc is not None and not chunks:  # e.g. only headings: refuse, not index it empty
                    report.rejected.append(
                        DocumentRejected(doc.path, "no_text", "no indexable text (only headings?); add content")
                    )
                    continue
                batch.append((item, chunks, pii, doc))
                batch_chunks += len(chunks)
                if batch_chunks >= _BATCH_CHUNKS:
                    done += len(batch)
                    self._apply(batch, report)
                    batch, batch_chunks = [], 0
                    if progress:
                        progress(done, total, item.doc_id)
        if batch:
            done += len(batch)
            self._apply(batch, report)
            if progress:
                progress(done, total, "")
        self.store.flush()
        threshold = self.settings.store_optimize_min_points
        if threshold and (unindexed := self.store.unindexed()) >= threshold:
            t0 = time.perf_counter()
            logger.info("building the index's HNSW for %d points", unindexed)
            self.store.optimize()
            report.timed("optimize", t0)
        report.embed_calls = self.embedder.calls - calls_before
        report.texts_embedded = self.embedder.texts_embedded - texts_before
        report.seconds = time.perf_counter() - started
        return report

    # ------------------------------------------------------------------------------------------
    def _recover(self) -> list[str]:
        """Undo what a killed run left half-done (see ingest.manifest)."""
        recovered = []
        for entry in self.manifest.journal():
            self.store.delete(list(set(entry.old_ids) | set(entry.new_ids)))
            self.store.flush()
            self.manifest.drop_current(entry.doc_id)
            self.manifest.commit_changes(
                events=[(entry.doc_id, "*", "recovered", None, None)],
                journal_done=[entry.doc_id],
            )
            recovered.append(entry.doc_id)
            logger.warning("recovered %s from an interrupted run; it is re-ingested", entry.doc_id)
        return recovered

    def _record_superseded(self, plan: IngestPlan) -> list[str]:
        """Superseded versions live in the manifest only: record the ones on disk, forget the
        ones whose file is gone. A current row turns superseded in `_apply`, together with the
        store change that removes its chunks."""
        existing = {(r.doc_id, r.version): r for r in self.manifest.rows("superseded")}
        upserts = []
        for entry in plan.not_current:
            row = superseded_row(entry)
            key = (row.doc_id, row.version)
            cur = plan.current_rows.get(row.doc_id)
            if cur is not None and cur.version == row.version:
                continue
            if key not in existing or (existing[key].content_hash, existing[key].path) != (
                row.content_hash,
                row.path,
            ):
                upserts.append(row)
        removals = [k for k in existing if k not in plan.present and k[0] not in plan.frozen]
        events = [(r.doc_id, r.version, "superseded", r.path, r.content_hash) for r in upserts]
        events += [(d, v, "removed", existing[(d, v)].path, None) for d, v in removals]
        events += [(r.doc_id, r.version, "moved", r.path, r.content_hash) for r in plan.renamed]
        if upserts or removals or plan.renamed:
            self.manifest.commit_changes(
                upserts=[*upserts, *plan.renamed], removals=removals, events=events
            )
        return [f"{r.doc_id}@v{r.version}" for r in upserts if (r.doc_id, r.version) not in existing]

    def _apply(
        self,
        batch: list[tuple[Work, list[Chunk], PiiReport, LoadedDocument | None]],
        report: IngestReport,
    ) -> None:
        if not self.settings.store_url:
            chunks = [chunk for _, chunks, _, _ in batch for chunk in chunks]
            need = sum(len(c.text.encode("utf-8")) * 4 + _POINT_OVERHEAD_BYTES for c in chunks)
            ensure_free_space(self.settings, need, f"write {len(chunks)} chunks")
        if self._sparse is None:
            self._sparse = SparseEncoder()
        texts = [
            _embedding_text(doc, chunk) for _, chunks, _, doc in batch if doc for chunk in chunks
        ]
        t0 = time.perf_counter()
        embedded = iter(zip(texts, self.embedder.embed(texts)))
        report.timed("embed_dense", t0)
        t0 = time.perf_counter()
        points: list[StoredPoint] = []
        journal: list[JournalEntry] = []
        new_rows: list[ManifestRow] = []
        removals: list[tuple[str, str]] = []
        events = []
        old_ids: list[str] = []
        for item, chunks, pii, doc in batch:
            doc_points = []
            if doc is not None:
                for chunk in chunks:
                    text, vector = next(embedded)  # same order as `texts`
                    doc_points.append(
                        StoredPoint(
                            id=_point_id(doc, chunk),
                            dense=vector,
                            sparse=self._sparse.document(text),
                            payload=_payload(doc, chunk),
                        )
                    )
                new_rows.append(
                    manifest_row(doc, "current", tuple(p.id for p in doc_points), pii.counts)
                )
                events.append((doc.meta.id, doc.meta.version, item.event, doc.path, doc.content_hash))
                report.pii[f"{doc.meta.id}@v{doc.meta.version}"] = pii.counts
            old = item.old
            if old is not None:
                old_ids.extend(old.point_ids)
                if item.new is None or old.version != item.new.meta.version:
                    if item.old_kept:  # superseded by a newer version (or a reinstated older one)
                        new_rows.append(as_superseded(old))
                        events.append(
                            (old.doc_id, old.version, "superseded", old.path, old.content_hash)
                        )
                    else:
                        removals.append((old.doc_id, old.version))
                        events.append((old.doc_id, old.version, "deleted", old.path, None))
            journal.append(
                JournalEntry(
                    item.doc_id,
                    item.old.point_ids if item.old else (),
                    tuple(p.id for p in doc_points),
                )
            )
            points.extend(doc_points)
            label = f"{item.doc_id}@v{doc.meta.version if doc else old.version}"
            if item.event == "added":
                report.added.append(label)
            elif item.event in ("deleted", "withdrawn"):
                report.deleted.append(label)
            else:
                report.updated.append(label)

        report.timed("embed_sparse", t0)
        t0 = time.perf_counter()
        self.manifest.begin_journal(journal)
        _fault_point("after_journal")
        self.store.upsert(points)
        _fault_point("after_upsert")
        self.store.delete(old_ids)
        _fault_point("after_delete")
        self.manifest.commit_changes(
            upserts=new_rows,
            removals=removals,
            events=events,
            journal_done=[j.doc_id for j in journal],
        )
        report.timed("store", t0)
        report.chunks_written += len(points)
        report.chunks_deleted += len(old_ids)


# --- helpers ------------------------------------------------------------------------------------
def _embedding_text(doc: LoadedDocument, chunk: Chunk) -> str:
    # title and section path make short chunks findable ("carry-over" under "4. Leave")
    return f"{doc.meta.title}\n{' > '.join(chunk.section_path)}\n{chunk.text}"


def _point_id(doc: LoadedDocument, chunk: Chunk) -> str:
    # the content hash is part of the id, so a changed document never reuses an old point id and
    # "write new, then delete old" can never delete what it just wrote
    return str(uuid.uuid5(_POINT_NS, f"{chunk.citation_id}|{doc.content_hash}|{chunk.text_hash}"))


def _payload(doc: LoadedDocument, chunk: Chunk) -> dict:
    meta = doc.meta
    return ChunkPayload(
        doc_id=meta.id,
        version=meta.version,
        title=meta.title,
        effective_date=meta.effective_date,
        owner=meta.owner,
        source=doc.path,
        section=chunk.section_path,
        section_path=" › ".join(chunk.section_path),
        chunk_index=chunk.index,
        citation_id=chunk.citation_id,
        text=chunk.text,
        start=chunk.start,
        end=chunk.end,
        groups=meta.groups,
        region=meta.region,
        content_hash=doc.content_hash,
        chunk_hash=chunk.text_hash,
    ).to_store()


def _read_allow_list(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _fault_point(name: str) -> None:
    """Test-only fault injection: POLICYRAG_FAULT_INJECT=after_upsert:2 kills the process hard
    at the 2nd time this point is reached, as a crash or `kill -9` would."""
    spec = os.environ.get("POLICYRAG_FAULT_INJECT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    counter = f"_POLICYRAG_FAULT_{name}"
    seen = int(os.environ.get(counter, "0")) + 1
    os.environ[counter] = str(seen)
    if seen >= int(nth or 1):
        os._exit(137)
