"""Planning an ingest run: compare the folder with the manifest and decide, per document id,
what must change in the store. Nothing is written here.

The plan returns what it found (rejections, skipped files, unchanged and superseded versions);
the pipeline copies them into its run summary.

Unchanged files are recognised by their hash without parsing. For each document id the current
version is the highest version already in effect (effective_date <= today), or the highest
version if none is in effect yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.errors import DocumentRejected
from ingest.documents import LoadedDocument
from ingest.loaders import discover_files, fingerprint, link_outside
from ingest.manifest import Manifest, ManifestRow

Entry = ManifestRow | LoadedDocument


@dataclass
class Work:
    """One document id whose store content must change."""

    doc_id: str
    new: LoadedDocument | None  # None = delete
    old: ManifestRow | None
    event: str  # added | updated | deleted | reinstated
    old_kept: bool  # the old current version's file is still there (-> superseded, not removed)


@dataclass
class IngestPlan:
    work: list[Work] = field(default_factory=list)
    not_current: list[Entry] = field(default_factory=list)  # versions on disk, not current
    present: dict[tuple[str, str], Entry] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)  # document ids left exactly as indexed
    current_rows: dict[str, ManifestRow] = field(default_factory=dict)
    renamed: list[ManifestRow] = field(default_factory=list)
    # what the run's summary shows
    rejected: list[DocumentRejected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)


def plan_ingest(
    root: Path,
    manifest: Manifest,
    load: Callable[[Path], LoadedDocument | None],
    today: dt.date,
) -> IngestPlan:
    """`load` parses one file; a `DocumentRejected` it raises is recorded in the plan."""
    plan = IngestPlan()

    def try_load(path: Path) -> LoadedDocument | None:
        try:
            return load(path)
        except DocumentRejected as exc:
            plan.rejected.append(exc)
            return None

    # 1. what is on disk: unchanged files are recognised by hash without parsing
    candidates, skipped = discover_files(root)
    plan.skipped = [p.relative_to(root).as_posix() for p in skipped]
    by_path = manifest.by_path()
    paths_of: dict[tuple[str, str], list[str]] = {}
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        if (real := link_outside(path, root)) is not None:
            plan.rejected.append(DocumentRejected(
                rel, "outside_root", f"is a symbolic link to {real}, outside the corpus folder {root}; "
                "copy the document into the folder instead of linking to it"))
            continue
        try:
            digest = fingerprint(path)
        except OSError as exc:
            plan.rejected.append(DocumentRejected(rel, "unreadable", f"cannot read: {exc}"))
            continue
        known = next((r for r in by_path.get(rel, []) if r.content_hash == digest), None)
        entry: Entry | None = known or try_load(path)
        if entry is None:
            continue
        key = entry_key(entry)
        paths_of.setdefault(key, []).append(rel)
        plan.present[key] = entry

    # 2. the same (id, version) in two files: reject both, touch nothing of that document
    for key, paths in paths_of.items():
        if len(paths) > 1:
            for rel in paths:
                others = ", ".join(p for p in paths if p != rel)
                plan.rejected.append(
                    DocumentRejected(
                        rel,
                        "duplicate",
                        f"document id {key[0]!r} version {key[1]} is also defined in {others}; "
                        "give each version its own id/version",
                    )
                )
            plan.present.pop(key, None)
            plan.frozen.add(key[0])
    # 2b. a file new to the manifest that claims an indexed document's id may bring a new version,
    # but never with wider access (more groups, another region): that is a takeover
    plan.current_rows = manifest.current()
    rows = manifest.rows()
    known_paths: dict[str, set[str]] = {}
    for row in rows:
        known_paths.setdefault(row.doc_id, set()).add(row.path)
    for key, entry in list(plan.present.items()):
        owner = plan.current_rows.get(key[0])
        if owner is None or isinstance(entry, ManifestRow) or entry.path in known_paths.get(key[0], set()):
            continue
        wider = sorted(set(entry.meta.groups) - set(owner.meta.groups))
        if wider or entry.meta.region != owner.meta.region:
            change = (f"adds group(s) {', '.join(wider)}" if wider
                      else f"changes the region from {owner.meta.region} to {entry.meta.region}")
            plan.rejected.append(DocumentRejected(
                entry.path, "id_takeover",
                f"claims the id {key[0]!r} of {owner.path} and {change}; a new file may add a version of a "
                "document only with the same or narrower access: widen access in the document's own file, "
                "or give this file its own id"))
            plan.present.pop(key)

    rejected = {r.path: r for r in plan.rejected}
    withdrawn: set[str] = set()
    for row in rows:
        if row.path not in rejected:
            continue
        current = plan.current_rows.get(row.doc_id)
        if current is not None and current.path == row.path and _narrows(current, rejected[row.path]):
            # fail closed: an edit meant to take readers away must not leave the old, wider
            # version served while the edit waits for a fix
            withdrawn.add(row.doc_id)
            rejection = rejected[row.path]
            rejection.message += (f" The indexed version {row.doc_id}@v{row.version} is withdrawn until this is "
                                  "fixed, because the edit narrows who may read it.")
            rejection.args = (f"{rejection.path}: {rejection.message}",)
        else:
            plan.frozen.add(row.doc_id)  # a broken edit that does not narrow access removes nothing
    for doc_id in sorted(withdrawn - plan.frozen):
        plan.work.append(Work(doc_id, None, plan.current_rows[doc_id], "withdrawn", False))
    plan.frozen |= withdrawn  # nothing else of it changes in this run
    # a rejected file that names its document freezes it too: with the current version withdrawn,
    # an older (wider) version's file must not become current while the edit waits for a fix
    plan.frozen |= {r.access[0] for r in plan.rejected if r.access is not None}

    # 3. desired state per document id
    versions: dict[str, list[Entry]] = {}
    for key, entry in plan.present.items():
        versions.setdefault(key[0], []).append(entry)
    for doc_id, entries in sorted(versions.items()):
        if doc_id in plan.frozen:
            continue
        winner = pick_current(entries, today)
        plan.not_current.extend(e for e in entries if e is not winner)
        old = plan.current_rows.get(doc_id)
        if old is not None and (old.version, old.content_hash) == (
            entry_key(winner)[1],
            winner.content_hash,
        ):
            plan.unchanged.append(f"{doc_id}@v{old.version}")
            if winner.path != old.path:  # moved or renamed, same content
                plan.renamed.append(replace(old, path=winner.path))
            continue
        if isinstance(winner, ManifestRow):  # a known superseded version becomes current
            loaded = try_load(root / winner.path)
            if loaded is None:
                continue
            winner = loaded
        if old is None:
            event = "added"
        elif old.version == winner.meta.version:
            event = "updated"
        elif winner.meta.parsed_version > old.meta.parsed_version:
            event = "added"
            plan.superseded.append(f"{doc_id}@v{old.version}")
        else:
            event = "reinstated"  # the newer version's file was removed
        old_kept = old is not None and (doc_id, old.version) in plan.present
        plan.work.append(Work(doc_id, winner, old, event, old_kept))
    for doc_id, old in sorted(plan.current_rows.items()):
        if doc_id not in versions and doc_id not in plan.frozen:
            plan.work.append(Work(doc_id, None, old, "deleted", False))
    return plan


def _narrows(current: ManifestRow, rejection: DocumentRejected) -> bool:
    """Whether a rejected edit of the current version's file would take readers away (groups
    removed or the region changed). An edit whose metadata cannot be read says nothing about
    access: the indexed version stays, as for any broken edit."""
    if rejection.access is None:
        return False
    _, groups, region = rejection.access
    return bool(set(current.meta.groups) - set(groups)) or region != current.meta.region


def entry_key(entry: Entry) -> tuple[str, str]:
    if isinstance(entry, ManifestRow):
        return entry.doc_id, entry.version
    return entry.meta.id, entry.meta.version


def pick_current(entries: list[Entry], today: dt.date) -> Entry:
    effective = [e for e in entries if e.meta.effective_date <= today]
    pool = effective or entries
    return max(pool, key=lambda e: e.meta.parsed_version)


def manifest_row(
    doc: LoadedDocument,
    status: str,
    point_ids: tuple[str, ...] = (),
    pii: dict[str, int] | None = None,
) -> ManifestRow:
    return ManifestRow(
        doc_id=doc.meta.id,
        version=doc.meta.version,
        status=status,
        path=doc.path,
        content_hash=doc.content_hash,
        default_groups=",".join(doc.meta.groups) if doc.default_groups_applied else None,
        meta=doc.meta,
        point_ids=point_ids,
        pii=pii or {},
    )


def superseded_row(entry: Entry) -> ManifestRow:
    if isinstance(entry, ManifestRow):
        return as_superseded(entry)
    return manifest_row(entry, "superseded")


def as_superseded(row: ManifestRow) -> ManifestRow:
    return replace(row, status="superseded", point_ids=())
