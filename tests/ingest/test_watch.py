import threading
import time

from ingest.watch import watch_folder
from tests.conftest import write_policy


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_watch_applies_added_changed_and_deleted_files(tmp_path, make_ingestor, backend):
    root = tmp_path / "docs"
    write_policy(root, "a.md", doc_id="a", body="## 1. A\n\nFirst rule.")
    ing = make_ingestor()
    reports, stop = [], threading.Event()
    thread = threading.Thread(
        target=watch_folder, args=(ing, root, reports.append),
        kwargs={"stop_event": stop, "debounce_ms": 100}, daemon=True,
    )
    thread.start()
    try:
        assert wait_for(lambda: len(reports) >= 1)
        assert reports[0].added == ["a@v1"]
        write_policy(root, "b.md", doc_id="b", body="## 1. B\n\nSecond rule.")
        assert wait_for(lambda: any("b@v1" in r.added for r in reports))
        (root / "a.md").unlink()
        assert wait_for(lambda: any("a@v1" in r.deleted for r in reports))
        assert set(ing.manifest.current()) == {"b"}
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
