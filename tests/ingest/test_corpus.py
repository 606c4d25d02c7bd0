"""The sample corpus itself, ingested for real once per module."""

import pytest

from core.settings import Settings
from ingest.pipeline import Ingestor
from retrieval.directory import load_directory
from tests.conftest import CORPUS


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder, scrubber):
    data = tmp_path_factory.mktemp("corpus") / "data"
    ing = Ingestor(Settings(data_dir=data), embedder=embedder, scrubber=scrubber)
    report = ing.run(CORPUS)
    yield ing, report, dict(ing.store.scroll(["doc_id", "version", "text", "groups", "region", "section", "title"]))
    ing.close()


def test_whole_corpus_ingests_cleanly(indexed):
    _, report, points = indexed
    assert report.ok, [str(r) for r in report.rejected]
    assert len(report.added) >= 25 and len(points) == report.chunks_written
    assert sorted(report.superseded) == ["expenses@v1", "leave-uk@v2"]


def test_only_current_versions_are_in_the_store(indexed):
    _, _, points = indexed
    versions = {(p["doc_id"], p["version"]) for p in points.values()}
    assert ("leave-uk", "3") in versions and ("leave-uk", "2") not in versions
    assert ("expenses", "2") in versions and ("expenses", "1") not in versions
    leave = " ".join(p["text"] for p in points.values() if p["doc_id"] == "leave-uk")
    assert "8 days" in leave and "up to 5 days" not in leave


def test_restricted_documents_keep_their_groups(indexed):
    _, _, points = indexed
    groups = {p["doc_id"]: tuple(p["groups"]) for p in points.values()}
    assert groups["pay-bands"] == ("hr", "managers")
    assert groups["executive-compensation"] == ("executives", "hr")
    assert groups["investigations-procedure"] == ("compliance", "legal")
    assert groups["security-incident-runbook"] == ("security",)


def test_planted_personal_data_is_gone(indexed):
    _, report, points = indexed
    text = " ".join(p["text"] for p in points.values())
    for secret in ("jane.whitfield@gmail.com", "Jane Whitfield", "Daniel Okafor", "GB82 WEST",
                   "4111 1111 1111 1111", "JG 10 37 92 D", "7946 0958"):
        assert secret not in text, secret
    assert report.pii["whistleblowing@v3"]["EMAIL_ADDRESS"] == 1
    # functional mailboxes are policy content, not personal data
    assert "hr@northwind-meridian.example" in text


def test_every_chunk_names_its_section(indexed):
    _, _, points = indexed
    with_section = [p for p in points.values() if p["section"]]
    assert len(with_section) / len(points) > 0.95


def test_directory_covers_the_demo_users():
    directory = load_directory(CORPUS / "directory.yaml")
    assert {"alice", "bob", "clara", "mike", "hannah", "leo", "carla", "sam", "erin", "connor"} <= set(directory.users)
    assert directory.users["connor"].groups == ("contractors",)
    assert {u.region for u in directory.users.values()} >= {"UK", "US", "DE"}
