"""Killing ingest at any point and rerunning it leaves store and manifest consistent."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from core.settings import Settings
from ingest.pipeline import Ingestor
from tests.conftest import write_policy

pytestmark = pytest.mark.slow


def run_ingest(root, data_dir, fault=None, timeout=300):
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("POLICYRAG_FAULT_INJECT", None)
    if fault:
        env["POLICYRAG_FAULT_INJECT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "policyrag", "ingest", str(root), "--json"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def corpus(root):
    for i in range(4):
        write_policy(root, f"p{i}.md", doc_id=f"p{i}", body=f"## 1. Rule\n\nRule number {i} applies to everyone.\n\n## 2. More\n\nDetail {i}.")
    write_policy(root, "leave-v2.md", doc_id="leave", version=2, body="## 1. Carry\n\nCarry over 5 days.")
    return root


def edit(root):
    (root / "p0.md").write_text((root / "p0.md").read_text().replace("Rule number 0", "Rule number zero"))
    (root / "p1.md").unlink()
    write_policy(root, "leave-v3.md", doc_id="leave", version=3, effective_date="2025-06-01", body="## 1. Carry\n\nCarry over 8 days.")


def check_consistent(root, data_dir, embedder, scrubber):
    with Ingestor(Settings(data_dir=data_dir), embedder=embedder, scrubber=scrubber) as ing:
        assert ing.manifest.journal() == []
        stored = dict(ing.store.scroll(["doc_id", "version", "text"]))
        assert set(stored) == ing.manifest.committed_point_ids()  # no orphans, none missing
        current = ing.manifest.current()
        on_disk = {p.stem.split("-v")[0] for p in root.glob("*.md")}
        assert set(current) == on_disk
        for row in current.values():
            assert row.point_ids and set(row.point_ids) <= set(stored)
        texts = " ".join(p["text"] for p in stored.values())
        return current, texts


@pytest.mark.parametrize("point", ["after_journal", "after_upsert", "after_delete"])
def test_kill_at_each_step_then_rerun_is_consistent(tmp_path, point, embedder, scrubber):
    root, data = corpus(tmp_path / "docs"), tmp_path / "data"
    killed = run_ingest(root, data, fault=f"{point}:1")
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert run_ingest(root, data).returncode == 0
    edit(root)
    killed = run_ingest(root, data, fault=f"{point}:1")
    assert killed.returncode == 137, killed.stderr[-2000:]
    final = run_ingest(root, data)
    assert final.returncode == 0, final.stderr[-2000:]
    current, texts = check_consistent(root, data, embedder, scrubber)
    assert current["leave"].version == "3" and "8 days" in texts and "5 days" not in texts
    assert "Rule number zero" in texts and "Rule number 1 " not in texts


def test_sigkill_at_random_moments_never_corrupts(tmp_path, corpus_copy, embedder, scrubber):
    data = tmp_path / "data"
    rng = random.Random(7)
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "policyrag", "ingest", str(corpus_copy), "--json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(4.0, 16.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = run_ingest(corpus_copy, data)
    assert final.returncode == 0, final.stderr[-2000:]
    with Ingestor(Settings(data_dir=data), embedder=embedder, scrubber=scrubber) as ing:
        assert set(dict(ing.store.scroll())) == ing.manifest.committed_point_ids()
        assert ing.manifest.journal() == []
        assert len(ing.manifest.current()) >= 25
