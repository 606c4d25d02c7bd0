import zipfile

import pytest

from core.errors import DocumentRejected
from ingest.loaders import discover_files, load_document
from tests.conftest import CORPUS, write_policy

MAX = 1_000_000


def load(path, root, **kw):
    return load_document(path, root, max_bytes=kw.pop("max_bytes", MAX), **kw)


def rejected_reason(path, root, **kw) -> DocumentRejected:
    with pytest.raises(DocumentRejected) as info:
        load(path, root, **kw)
    return info.value


def test_markdown_front_matter_becomes_metadata(tmp_path):
    p = write_policy(tmp_path, "a.md", doc_id="leave-uk", version=3, groups="[all-staff, hr]",
                     region="UK", body="## 1. Scope\n\nApplies to UK staff.")
    doc = load(p, tmp_path)
    assert doc.meta.id == "leave-uk" and doc.meta.version == "3"
    assert doc.meta.groups == ("all-staff", "hr") and doc.meta.region == "UK"
    assert doc.text.startswith("# Leave Uk") and "## 1. Scope" in doc.text
    assert not doc.default_groups_applied


def test_html_headings_and_list_items_survive(tmp_path):
    doc = load(CORPUS / "travel.html", CORPUS)
    assert doc.format == "html" and doc.meta.id == "travel"
    lines = doc.text.splitlines()
    assert any(line.startswith("## ") for line in lines)
    assert any(line.startswith("### ") for line in lines)
    assert any(line.startswith("- ") for line in lines)


@pytest.mark.parametrize("name,doc_id", [("anti-bribery.pdf", "anti-bribery"), ("remote-work.docx", "remote-work")])
def test_pdf_and_docx_numbered_headings_are_recovered(name, doc_id):
    doc = load(CORPUS / name, CORPUS)
    assert doc.meta.id == doc_id
    headings = [line for line in doc.text.splitlines() if line.startswith("#")]
    assert len(headings) >= 5, headings
    assert any(h.startswith("### ") for h in headings)  # "4.2 ..." depth 2


def test_corpus_loads_without_rejections_and_skips_sources():
    candidates, skipped = discover_files(CORPUS)
    names = {p.name for p in candidates}
    assert "directory.yaml" not in names and not any("_formats" in str(p) for p in candidates)
    docs = [load(p, CORPUS) for p in candidates]
    assert len(docs) >= 25
    assert {"pay-bands", "executive-compensation", "investigations-procedure",
            "security-incident-runbook"} <= {d.meta.id for d in docs}


def test_empty_file_is_rejected(tmp_path):
    (tmp_path / "e.md").write_text("")
    assert rejected_reason(tmp_path / "e.md", tmp_path).reason == "empty"


def test_binary_garbage_is_rejected(tmp_path):
    (tmp_path / "g.md").write_bytes(bytes(range(256)) * 4)
    err = rejected_reason(tmp_path / "g.md", tmp_path)
    assert err.reason == "binary" and "g.md" in str(err)


def test_undecodable_text_names_the_byte(tmp_path):
    (tmp_path / "l.md").write_bytes("---\nid: x\n---\nCafé crème".encode("latin-1"))
    err = rejected_reason(tmp_path / "l.md", tmp_path)
    assert err.reason == "encoding" and "UTF-8" in err.message and "0xe9" in err.message


def test_corrupt_pdf_is_rejected(tmp_path):
    (tmp_path / "c.pdf").write_bytes(b"%PDF-1.7\n" + b"\x8f garbage " * 200)
    (tmp_path / "c.pdf.meta.yaml").write_text("id: c\ntitle: C\nversion: 1\neffective_date: 2025-01-01\nowner: x\ngroups: [hr]\n")
    assert rejected_reason(tmp_path / "c.pdf", tmp_path).reason == "corrupt"
    (tmp_path / "n.pdf").write_text("just text")
    assert rejected_reason(tmp_path / "n.pdf", tmp_path).reason == "corrupt"


def test_corrupt_docx_is_rejected(tmp_path):
    (tmp_path / "d.docx").write_bytes(b"PK\x03\x04 not really a zip")
    assert rejected_reason(tmp_path / "d.docx", tmp_path).reason == "corrupt"
    with zipfile.ZipFile(tmp_path / "z.docx", "w") as z:
        z.writestr("hello.txt", "no word document in here")
    assert rejected_reason(tmp_path / "z.docx", tmp_path).reason == "corrupt"


def test_file_over_size_limit_is_rejected(tmp_path):
    p = write_policy(tmp_path, "big.md", doc_id="big", body="Words. " * 2000)
    err = rejected_reason(p, tmp_path, max_bytes=4096)
    assert err.reason == "too_large" and "POLICYRAG_MAX_FILE_BYTES" in err.message


def test_missing_front_matter_is_rejected_unless_default_groups(tmp_path):
    p = tmp_path / "plain-note.md"
    p.write_text("# Parking\n\nStaff may park in bay 4.\n")
    assert rejected_reason(p, tmp_path).reason == "no_metadata"
    doc = load(p, tmp_path, default_groups=["all-staff"])
    assert doc.meta.groups == ("all-staff",) and doc.default_groups_applied
    assert doc.meta.id == "plain-note" and doc.meta.title == "Parking"


def test_document_without_groups_is_not_public(tmp_path):
    p = tmp_path / "nogroups.md"
    p.write_text("---\nid: ng\ntitle: NG\nversion: 1\neffective_date: 2025-01-01\nowner: x\n---\nText.\n")
    err = rejected_reason(p, tmp_path)
    assert err.reason == "no_groups" and "--default-groups" in err.message
    assert load(p, tmp_path, default_groups=["hr"]).meta.groups == ("hr",)


def test_malformed_front_matter_is_rejected(tmp_path):
    p = tmp_path / "bad.md"
    p.write_text("---\nid: [unclosed\ngroups: hr\n---\nBody.\n")
    assert rejected_reason(p, tmp_path).reason == "front_matter"
    q = write_policy(tmp_path, "v.md", doc_id="v", version="three", body="Text.")
    err = rejected_reason(q, tmp_path)
    assert err.reason == "front_matter" and "version" in err.message


def test_unknown_group_is_rejected(tmp_path):
    p = write_policy(tmp_path, "t.md", doc_id="t", groups="[al-staff]", body="Text.")
    err = rejected_reason(p, tmp_path, known_groups={"all-staff", "hr"})
    assert err.reason == "unknown_group" and "al-staff" in err.message


def test_a_docx_that_expands_far_beyond_its_size_is_rejected_before_it_is_inflated(tmp_path):
    """Issue 15 #4: a 216 KB DOCX expanded to 74 MB of XML and a 1.27 GB peak."""
    import time

    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document>" + " " * 40_000_000 + "</w:document>")
    assert path.stat().st_size < 200_000
    started = time.perf_counter()
    err = rejected_reason(path, tmp_path, max_bytes=10_000_000)
    assert err.reason == "too_large" and "expands to 40.0 MB" in err.message
    assert time.perf_counter() - started < 2


def test_yaml_aliases_and_huge_group_names_are_rejected_without_expanding_them(tmp_path):
    """Issue 15 #4: a 501-byte .md with nested YAML aliases in `groups` produced a 522 MB group
    name in 22 s, echoed in the error."""
    import time

    laughs = "\n".join([
        "---", "id: bomb", "title: Bomb", "version: 1", "effective_date: 2025-01-01", "owner: x",
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, n in zip("abcdefgh", "bcdefghi")),
        "groups: *i", "---", "Text.",
    ])
    (tmp_path / "bomb.md").write_text(laughs)
    assert len(laughs) < 600
    started = time.perf_counter()
    err = rejected_reason(tmp_path / "bomb.md", tmp_path)
    assert err.reason == "front_matter" and "aliases" in err.message and len(err.message) < 300
    assert time.perf_counter() - started < 1
    long = write_policy(tmp_path, "long.md", doc_id="long", body="## 1. A\n\nText.", groups="[" + "x" * 5000 + "]")
    err = rejected_reason(long, tmp_path)
    assert err.reason == "front_matter" and "is not a group name" in err.message and len(err.message) < 300
