"""The loaders run in a worker process under a memory and a time limit (ingest/sandbox.py): a file
past one is rejected as too_costly, the worker is replaced, and the files after it load as before.

The worker imports this module to run the small functions below: keep its imports light (no
tests.conftest, which loads the models).
"""

import os
import resource
import time
import zipfile

import pytest

from core.errors import DocumentRejected
from core.settings import PROJECT_ROOT, Settings
from ingest.loaders import discover_files, load_document
from ingest.sandbox import REASON, LoaderSandbox, run_limited

CORPUS = PROJECT_ROOT / "policies"
META = "id: {id}\ntitle: {id}\nversion: 1\neffective_date: 2024-01-01\nowner: HR\ngroups: [all-staff]\n"


def allocate(mb: int) -> int:
    return len(bytearray(mb * 2**20))


def die() -> None:
    os.kill(os.getpid(), 9)


def rejection(sandbox: LoaderSandbox, fn, *args, **kwargs) -> DocumentRejected:
    with pytest.raises(DocumentRejected) as info:
        sandbox.run("hostile.md", fn, *args, **kwargs)
    assert info.value.reason == REASON and info.value.path == "hostile.md"
    return info.value


def slow_front_matter(path) -> None:
    """600 KB of YAML: 3 s to parse on a quiet 2-core machine, inside every size cap."""
    path.write_text(f"---\n{META.format(id='slow')}notes: [{', '.join(['a'] * 200_000)}]\n---\n# Slow\n\nText.\n")


def docx_bomb(path) -> None:
    """382 KB that passes the DOCX caps (27 MB of XML, 71x): 5.9 s and a 580 MB peak in-process."""
    xml = ('<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
           '2006/main"><w:body>' + "<w:p><w:r><w:t>a</w:t></w:r></w:p>" * 800_000 + "</w:body></w:document>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", xml)
        archive.writestr(zipfile.ZipInfo("word/media/pad.bin"), os.urandom(len(xml) // 90),
                         compress_type=zipfile.ZIP_STORED)  # keeps the ratio under the cap
    path.with_name(path.name + ".meta.yaml").write_text(META.format(id="bomb"))


@pytest.mark.parametrize("backend", ["edge"])
def test_a_file_past_the_time_limit_is_rejected_and_the_rest_of_the_ingest_goes_on(tmp_path, make_ingestor):
    # imported here, not at the top: see the module's docstring
    from tests.conftest import write_policy

    root = tmp_path / "docs"
    root.mkdir()
    slow_front_matter(root / "a-slow.md")
    write_policy(root, "b-conduct.md", doc_id="conduct", body="## 1. Respect\n\nTreat colleagues with respect.")
    write_policy(root, "c-gifts.md", doc_id="gifts", body="## 1. Gifts\n\nDeclare gifts above GBP 50.")
    started = time.perf_counter()
    report = make_ingestor(loader_timeout_s=1).run(root)
    assert [(r.path, r.reason) for r in report.rejected] == [("a-slow.md", REASON)]
    assert "1 s" in report.rejected[0].message and "POLICYRAG_LOADER_TIMEOUT_S" in report.rejected[0].message
    assert sorted(report.added) == ["conduct@v1", "gifts@v1"]
    assert time.perf_counter() - started < 60


def test_a_docx_that_slips_past_the_size_caps_is_stopped_by_the_memory_limit(tmp_path):
    docx_bomb(tmp_path / "bomb.docx")
    with LoaderSandbox(memory_mb=300, timeout_s=60) as sandbox:
        with pytest.raises(DocumentRejected) as info:
            sandbox.run("bomb.docx", load_document, tmp_path / "bomb.docx", tmp_path, max_bytes=20 * 2**20)
        assert info.value.reason == REASON and "300 MB" in info.value.message
        travel = sandbox.run("travel.html", load_document, CORPUS / "travel.html", CORPUS, max_bytes=2**20)
        assert travel == load_document(CORPUS / "travel.html", CORPUS, max_bytes=2**20)
        assert sandbox.workers_started == 2  # the spent worker was replaced


def test_a_memory_hog_is_rejected_and_the_next_call_gets_a_fresh_worker():
    with LoaderSandbox(memory_mb=300, timeout_s=30) as sandbox:
        assert "more than 300 MB" in rejection(sandbox, allocate, 600).message
        assert sandbox.run("next.md", allocate, 200) == 200 * 2**20
        assert sandbox.workers_started == 2


def test_a_stuck_call_is_stopped_at_the_time_limit_and_the_worker_replaced():
    with LoaderSandbox(memory_mb=300, timeout_s=1) as sandbox:
        sandbox.run("warm.md", len, "")  # the worker's start is not the file's time
        started = time.perf_counter()
        assert "longer than 1 s" in rejection(sandbox, time.sleep, 8).message
        assert time.perf_counter() - started < 5
        assert sandbox.run("next.md", len, "ok") == 2 and sandbox.workers_started == 2


def test_a_worker_that_dies_rejects_that_file_only():
    with LoaderSandbox(memory_mb=300, timeout_s=30) as sandbox:
        assert "died reading it (killed by SIGKILL)" in rejection(sandbox, die).message
        assert sandbox.run("next.md", len, "ok") == 2 and sandbox.workers_started == 2


def test_documents_and_rejections_are_the_same_through_the_sandbox(tmp_path):
    files, _ = discover_files(CORPUS)
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "latin1.md").write_bytes("---\nid: x\n---\ncaf\xe9".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (tmp_path / "typo.md").write_text(f"---\n{META.format(id='typo').replace('all-staff', 'al-staff')}---\n# T\n\nText.\n")
    cases = [(p, CORPUS, {}) for p in files] + [(p, tmp_path, {"known_groups": {"all-staff"}})
                                               for p in sorted(tmp_path.iterdir())]

    def outcome(load, path, root, kw):
        try:
            return load(path, root, max_bytes=20 * 2**20, **kw)
        except DocumentRejected as exc:
            return exc.path, exc.reason, exc.message, exc.access

    with LoaderSandbox(memory_mb=300, timeout_s=30) as sandbox:
        def boxed(path, root, **kw):
            return sandbox.run(path.name, load_document, path, root, **kw)

        outcomes = [outcome(load_document, path, root, kw) for path, root, kw in cases]
        assert [outcome(boxed, path, root, kw) for path, root, kw in cases] == outcomes
        with pytest.raises(TypeError, match="'>' not supported"):  # a bug stays a bug, not a rejection
            sandbox.run("x.md", load_document, CORPUS / "travel.html", CORPUS, max_bytes="20")
        assert sandbox.run("x", os.getpid) != os.getpid()  # it really ran in the worker, limited
        assert sandbox.run("x", resource.getrlimit, resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY
    assert sum(not isinstance(o, tuple) for o in outcomes) >= 25
    assert {o[1] for o in outcomes if isinstance(o, tuple)} == {"empty", "encoding", "corrupt", "unknown_group"}
    assert any(o[3] for o in outcomes if isinstance(o, tuple))  # the declared access crosses too

def test_limits_come_from_settings_and_zero_loads_in_process(monkeypatch):
    monkeypatch.setenv("POLICYRAG_LOADER_MEMORY_MB", "0")
    monkeypatch.setenv("POLICYRAG_LOADER_TIMEOUT_S", "0")
    assert run_limited(Settings(), "x.md", os.getpid) == os.getpid()
    assert Settings().loader_memory_mb == 0
    defaults = Settings(loader_memory_mb=1024, loader_timeout_s=30)
    assert run_limited(defaults, "x.md", os.getpid) != os.getpid()
