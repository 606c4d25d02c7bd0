"""The ingest run against the real stores (Qdrant Edge and qdrant-client in-process)."""

import datetime as dt
import time

import pytest

from ingest.manifest import Manifest
from retrieval.store import INDEXED_FIELDS
from tests.conftest import write_policy

LEAVE = """
## 1. Scope

This policy applies to every employee in the United Kingdom.

## 4. Carry-over

### 4.2 Carry-over limits

Employees may carry over up to {days} days of unused annual leave into the next leave year.
Carried-over days must be used by 31 March.
"""


def small_corpus(root):
    write_policy(root, "leave-v2.md", doc_id="leave-uk", version=2, region="UK",
                 effective_date="2024-01-01", body=LEAVE.format(days=5))
    write_policy(root, "conduct.md", doc_id="conduct", body="## 1. Respect\n\nTreat colleagues with respect.\n\n## 2. Gifts\n\nDeclare gifts above GBP 50.")
    write_policy(root, "pay.md", doc_id="pay-bands", groups="[hr, managers]",
                 body="## 1. Bands\n\nBand L5 UK pays GBP 78,000 to GBP 96,000.")
    return root


def store_state(ingestor):
    return {pid: p for pid, p in ingestor.store.scroll(["doc_id", "version", "citation_id", "groups", "region", "text"])}


def assert_consistent(ingestor):
    """The store holds exactly the manifest's committed points, and nothing is journaled."""
    stored = set(dict(ingestor.store.scroll()))
    assert stored == ingestor.manifest.committed_point_ids()
    assert ingestor.manifest.journal() == []


def test_acl_fields_are_indexed_before_any_data(make_ingestor):
    ing = make_ingestor()
    assert ing.store.count() == 0
    if ing.settings.store_url is None:  # qdrant-client local mode keeps no payload indexes
        assert set(INDEXED_FIELDS) <= ing.store.indexed_fields()


def test_first_ingest_stores_every_chunk_with_its_access_metadata(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    report = ing.run(root)
    assert report.ok and sorted(report.added) == ["conduct@v1", "leave-uk@v2", "pay-bands@v1"]
    points = store_state(ing)
    assert len(points) == report.chunks_written == ing.store.count()
    pay = [p for p in points.values() if p["doc_id"] == "pay-bands"]
    assert pay and all(p["groups"] == ["hr", "managers"] for p in pay)
    assert all(p["region"] == "UK" for p in points.values() if p["doc_id"] == "leave-uk")
    cited = {p["citation_id"] for p in points.values()}
    assert "leave-uk@v2#c0" in cited
    assert_consistent(ing)


def test_unchanged_rerun_costs_no_embedding(tmp_path, make_ingestor, embedder):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    before = set(dict(ing.store.scroll()))
    calls = embedder.calls
    report = ing.run(root)
    assert report.embed_calls == 0 and embedder.calls == calls
    assert report.chunks_written == 0 and len(report.unchanged) == 3
    assert set(dict(ing.store.scroll())) == before


def test_changed_document_replaces_exactly_its_own_chunks(tmp_path, make_ingestor, embedder):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    before = store_state(ing)
    (root / "conduct.md").write_text((root / "conduct.md").read_text().replace("GBP 50", "GBP 75"))
    texts = embedder.texts_embedded
    report = ing.run(root)
    after = store_state(ing)
    assert report.updated == ["conduct@v1"]
    new_conduct = [p for p in after.values() if p["doc_id"] == "conduct"]
    assert embedder.texts_embedded - texts == len(new_conduct)
    assert any("GBP 75" in p["text"] for p in new_conduct)
    assert not any("GBP 50" in p["text"] for p in after.values())
    # the other documents' points are untouched
    others = lambda s: {k for k, v in s.items() if v["doc_id"] != "conduct"}  # noqa: E731
    assert others(before) == others(after)
    assert_consistent(ing)


def test_deleted_file_removes_its_chunks(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    (root / "pay.md").unlink()
    report = ing.run(root)
    assert report.deleted == ["pay-bands@v1"]
    assert not any(p["doc_id"] == "pay-bands" for p in store_state(ing).values())
    assert any(h["event"] == "deleted" for h in ing.manifest.history("pay-bands"))
    assert_consistent(ing)


def test_newer_version_supersedes_older_and_older_stays_in_history(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    write_policy(root, "leave-v3.md", doc_id="leave-uk", version=3, region="UK",
                 effective_date="2026-01-01", body=LEAVE.format(days=8))
    report = ing.run(root)
    assert report.added == ["leave-uk@v3"] and report.superseded == ["leave-uk@v2"]
    leave = [p for p in store_state(ing).values() if p["doc_id"] == "leave-uk"]
    assert leave and {p["version"] for p in leave} == {"3"}
    assert not any("5 days" in p["text"] for p in leave)
    rows = {(r.version, r.status) for r in ing.manifest.rows() if r.doc_id == "leave-uk"}
    assert rows == {("2", "superseded"), ("3", "current")}
    assert_consistent(ing)
    # removing the newer file brings the older version back
    (root / "leave-v3.md").unlink()
    report = ing.run(root)
    assert report.updated == ["leave-uk@v2"]
    assert {p["version"] for p in store_state(ing).values() if p["doc_id"] == "leave-uk"} == {"2"}
    assert_consistent(ing)


def test_future_version_waits_for_its_effective_date(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    write_policy(root, "leave-v3.md", doc_id="leave-uk", version=3, region="UK",
                 effective_date="2027-06-01", body=LEAVE.format(days=8))
    ing = make_ingestor()
    ing.run(root, today=dt.date(2026, 11, 28))
    assert {p["version"] for p in store_state(ing).values() if p["doc_id"] == "leave-uk"} == {"2"}
    ing.run(root, today=dt.date(2027, 6, 1))
    assert {p["version"] for p in store_state(ing).values() if p["doc_id"] == "leave-uk"} == {"3"}
    assert_consistent(ing)


def test_bad_files_are_reported_and_the_rest_is_ingested(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    (root / "empty.md").write_text("")
    (root / "garbage.pdf").write_bytes(b"\x00\x01binary")
    (root / "nogroups.md").write_text("---\nid: n\ntitle: N\nversion: 1\neffective_date: 2025-01-01\nowner: x\n---\nText.\n")
    report = make_ingestor().run(root)
    assert not report.ok
    assert {(r.path, r.reason) for r in report.rejected} == {
        ("empty.md", "empty"), ("garbage.pdf", "corrupt"), ("nogroups.md", "no_groups")}
    assert len(report.added) == 3


def test_a_broken_edit_keeps_the_indexed_version(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    before = {k for k, v in store_state(ing).items() if v["doc_id"] == "conduct"}
    (root / "conduct.md").write_text("---\nid: [broken\n---\n")
    report = ing.run(root)
    assert [r.path for r in report.rejected] == ["conduct.md"]
    assert {k for k, v in store_state(ing).items() if v["doc_id"] == "conduct"} == before
    assert_consistent(ing)


def test_same_id_and_version_in_two_files_is_rejected(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    write_policy(root, "conduct-copy.md", doc_id="conduct", groups="[contractors]", body="Other text.")
    report = make_ingestor().run(root)
    assert {r.path for r in report.rejected if r.reason == "duplicate"} == {"conduct.md", "conduct-copy.md"}
    assert "conduct@v1" not in report.added


def test_default_groups_apply_and_a_change_of_them_reindexes(tmp_path, make_ingestor):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "parking.md").write_text("# Parking\n\nStaff may park in bay 4.\n")
    ing = make_ingestor()
    assert ing.run(root, default_groups=["all-staff"]).added == ["parking@v1"]
    assert {tuple(p["groups"]) for p in store_state(ing).values()} == {("all-staff",)}
    report = ing.run(root, default_groups=["hr"])
    assert report.updated == ["parking@v1"]
    assert {tuple(p["groups"]) for p in store_state(ing).values()} == {("hr",)}
    assert_consistent(ing)


def test_unknown_groups_are_checked_against_the_directory(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    (root / "directory.yaml").write_text(
        "users:\n  alice: {groups: [all-staff], region: UK}\ngroups:\n  hr: HR\n  managers: M\n")
    write_policy(root, "typo.md", doc_id="typo", groups="[al-staff]", body="Text.")
    report = make_ingestor().run(root)
    assert [(r.path, r.reason) for r in report.rejected] == [("typo.md", "unknown_group")]


def test_pii_never_reaches_the_store(tmp_path, make_ingestor):
    root = tmp_path / "docs"
    write_policy(root, "wb.md", doc_id="wb", body=(
        "## 6. Example\n\nMy name is Jane Whitfield, email jane.whitfield@gmail.com, "
        "IBAN GB82 WEST 1234 5698 7654 32."))
    ing = make_ingestor()
    report = ing.run(root)
    stored = " ".join(p["text"] for p in store_state(ing).values())
    assert "Whitfield" not in stored and "gmail" not in stored and "GB82" not in stored
    assert report.pii["wb@v1"] == {"EMAIL_ADDRESS": 1, "IBAN_CODE": 1, "PERSON": 1}
    assert ing.manifest.current()["wb"].pii == report.pii["wb@v1"]


def test_state_persists_across_reopen(tmp_path, make_ingestor, backend):
    if backend == "server":
        pytest.skip("in-memory qdrant-client does not persist by design")
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    ids = set(dict(ing.store.scroll()))
    ing.close()
    again = make_ingestor()
    assert set(dict(again.store.scroll())) == ids
    assert again.run(root).embed_calls == 0


def test_manifest_records_history_events(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    events = [(h["doc_id"], h["event"]) for h in Manifest(ing.settings.manifest_path).history()]
    assert ("conduct", "added") in events and ("pay-bands", "added") in events


def test_document_with_only_headings_is_rejected(tmp_path, make_ingestor):
    root = small_corpus(tmp_path / "docs")
    write_policy(root, "hollow.md", doc_id="hollow", body="## 1. Scope\n\n## 2. Rules")
    report = make_ingestor().run(root)
    assert [(r.path, r.reason) for r in report.rejected] == [("hollow.md", "no_text")]
    assert "hollow@v1" not in report.added


def test_a_link_to_a_file_outside_the_corpus_is_rejected_and_never_indexed(tmp_path, make_ingestor):
    """Issue 15 #5: `policies/handbook.txt -> ../outside/.env` made the JWT secret searchable."""
    root = small_corpus(tmp_path / "docs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".env").write_text("POLICYRAG_JWT_HS256_SECRET=s3cr3t-value-that-must-stay-out\n")
    (root / "handbook.txt").symlink_to(outside / ".env")
    (outside / "more").mkdir()
    write_policy(outside / "more", "extra.md", doc_id="extra", body="## 1. Extra\n\nThe extra text lives outside.")
    (root / "linked-folder").symlink_to(outside / "more", target_is_directory=True)
    ingestor = make_ingestor()
    report = ingestor.run(root, default_groups=["all-staff"])
    reasons = {r.path: r.reason for r in report.rejected}
    # a linked folder is not descended into (rglob does not follow it); a linked file is reported
    assert reasons == {"handbook.txt": "outside_root"}
    assert "symbolic link" in next(r.message for r in report.rejected if r.path == "handbook.txt")
    texts = " ".join(p["text"] for p in store_state(ingestor).values())
    assert "s3cr3t" not in texts and "lives outside" not in texts
    assert len(report.added) == 3  # the rest of the corpus is ingested


def test_a_rejected_edit_that_narrows_access_withdraws_the_indexed_version(tmp_path, make_ingestor):
    """Finding 15.7: narrowing pay bands from all-staff to [hr, managers] with a typo was rejected
    and the all-staff version stayed served. Now the edit's intent counts: it is withdrawn."""
    root = small_corpus(tmp_path / "docs")
    (root / "directory.yaml").write_text(
        "users:\n  alice: {groups: [all-staff], region: UK}\n"
        "groups:\n  all-staff: all\n  hr: HR\n  managers: M\n  contractors: C\n")
    write_policy(root, "pay.md", doc_id="pay-bands", groups="[all-staff]",
                 body="## 1. Bands\n\nBand L5 UK pays GBP 78,000 to GBP 96,000.")
    ing = make_ingestor()
    ing.run(root)
    assert {tuple(p["groups"]) for p in store_state(ing).values() if p["doc_id"] == "pay-bands"} == {("all-staff",)}

    # a widening edit with a typo: rejected, and the indexed version stays as it was
    write_policy(root, "pay.md", doc_id="pay-bands", groups="[all-staff, contractorz]",
                 body="## 1. Bands\n\nBand L5 UK pays GBP 78,000 to GBP 96,000.")
    report = ing.run(root)
    assert [(r.path, r.reason) for r in report.rejected] == [("pay.md", "unknown_group")]
    assert "withdrawn" not in report.rejected[0].message and report.deleted == []
    assert any(p["doc_id"] == "pay-bands" for p in store_state(ing).values())

    # a narrowing edit with a typo: rejected, and the wider version leaves the index now
    write_policy(root, "pay.md", doc_id="pay-bands", groups="[hr, managrs]",
                 body="## 1. Bands\n\nBand L5 UK pays GBP 78,000 to GBP 96,000.")
    report = ing.run(root)
    assert [(r.path, r.reason) for r in report.rejected] == [("pay.md", "unknown_group")]
    assert "pay-bands@v1 is withdrawn" in str(report.rejected[0]) and report.deleted == ["pay-bands@v1"]
    assert not any(p["doc_id"] == "pay-bands" for p in store_state(ing).values())
    assert "pay-bands" not in ing.manifest.current()
    assert_consistent(ing)
    # the next run changes nothing while the file stays broken
    report = ing.run(root)
    assert report.deleted == report.added == [] and not any(p["doc_id"] == "pay-bands" for p in store_state(ing).values())

    # fixed: indexed with the narrower groups
    write_policy(root, "pay.md", doc_id="pay-bands", groups="[hr, managers]",
                 body="## 1. Bands\n\nBand L5 UK pays GBP 78,000 to GBP 96,000.")
    report = ing.run(root)
    assert report.rejected == [] and report.added == ["pay-bands@v1"]
    assert {tuple(p["groups"]) for p in store_state(ing).values() if p["doc_id"] == "pay-bands"} == {("hr", "managers")}
    assert_consistent(ing)


def test_a_new_file_cannot_take_over_an_indexed_documents_id_with_wider_access(tmp_path, make_ingestor):
    """Finding 15.6: `zz-notes.md` declaring `id: leave-uk, version: 99, region: global` replaced
    the UK leave policy for everyone."""
    root = small_corpus(tmp_path / "docs")
    ing = make_ingestor()
    ing.run(root)
    write_policy(root, "zz-notes.md", doc_id="leave-uk", version=99, region="global",
                 body="## 1. Carry-over\n\nEveryone may carry over 99 days.")
    write_policy(root, "zz-pay.md", doc_id="pay-bands", version=7, groups="[all-staff]",
                 body="## 1. Bands\n\nEvery band pays GBP 1.")
    report = ing.run(root)
    rejected = {r.path: r for r in report.rejected}
    assert {p: r.reason for p, r in rejected.items()} == {"zz-notes.md": "id_takeover", "zz-pay.md": "id_takeover"}
    assert "changes the region from UK to global" in rejected["zz-notes.md"].message
    assert "adds group(s) all-staff" in rejected["zz-pay.md"].message
    current = ing.manifest.current()
    assert (current["leave-uk"].path, current["pay-bands"].path) == ("leave-v2.md", "pay.md")
    assert "99 days" not in " ".join(p["text"] for p in store_state(ing).values())
    # a new version in a new file with the same access is how documents get new versions
    write_policy(root, "leave-v3.md", doc_id="leave-uk", version=3, region="UK",
                 effective_date="2024-06-01", body=LEAVE.format(days=8))
    report = ing.run(root)
    assert report.added == ["leave-uk@v3"] and ing.manifest.current()["leave-uk"].path == "leave-v3.md"
    assert_consistent(ing)


def test_access_comes_from_the_sidecar_never_from_the_documents_own_front_matter(tmp_path, make_ingestor):
    """Finding 15.6: a `.md` with front matter `[all-staff]` and a sidecar `[hr]` got all-staff."""
    root = small_corpus(tmp_path / "docs")
    write_policy(root, "bonus.md", doc_id="bonus", groups="[all-staff]", body="## 1. Pool\n\nThe pool is 8%.")
    (root / "bonus.md.meta.yaml").write_text("groups: [hr]\n")
    (root / "memo.md").write_text("# Memo\n\nThe memo text.\n")
    (root / "memo.md.meta.yaml").write_text(
        "id: memo\ntitle: Memo\nversion: 1\neffective_date: 2025-01-01\nowner: HR\ngroups: [hr]\nregion: global\n")
    report = make_ingestor().run(root)
    rejected = {r.path: r for r in report.rejected}
    assert rejected["bonus.md"].reason == "access_conflict" and "groups" in rejected["bonus.md"].message
    assert "memo@v1" in report.added  # a sidecar alone still works


def test_an_error_while_storing_stops_the_scrubbing_ahead_at_once(tmp_path, make_ingestor):
    """The scrub thread runs up to 64 documents ahead; when a batch fails to store (disk full, a
    store error) the documents queued behind it are not scrubbed for nothing."""
    root = tmp_path / "docs"
    for i in range(120):
        body = "\n\n".join(f"## {s}. Rule {s}\n\nRule {s} of policy {i} applies to every employee." for s in range(1, 7))
        write_policy(root, f"p{i}.md", doc_id=f"p{i}", body=body)
    ing = make_ingestor()
    real_scrub, scrubbed = ing.scrubber.scrub, []

    def counting_scrub(text, **kwargs):
        scrubbed.append(1)
        return real_scrub(text, **kwargs)

    at_failure = []

    def failing_apply(batch, report):
        at_failure.append(len(scrubbed))
        raise OSError("no space left on device")

    ing.scrubber.scrub = counting_scrub
    ing._apply = failing_apply
    try:
        with pytest.raises(OSError, match="no space"):
            ing.run(root)
        time.sleep(1.0)  # long enough for the thread to scrub several more, were it still running
        assert at_failure and at_failure[0] < 120
        assert len(scrubbed) <= at_failure[0] + 1  # at most the call already running finished
    finally:
        del ing.scrubber.scrub  # the scrubber is shared by the session's tests
