"""`policyrag bench ingest`: the ingest pipeline on a synthetic corpus, against a full rebuild.

Phases, each a fresh `python -m policyrag ingest` process (so peak RSS is the real per-run figure
and start-up costs count):
1. full ingest of N synthetic documents into an empty data directory: the baseline, i.e. what a
   pipeline without change detection pays on every run;
2. re-ingest with nothing changed: target zero embedding calls and < 5 s;
3. re-ingest with one document changed: only that document's chunks are embedded.
Peak memory of the full ingest: target < 1.5 GiB (issue 16), both as the largest single process
(`ru_maxrss`) and as the sampled PSS summed over the ingest process and its children.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

GROUPS = [f"group-{i:02d}" for i in range(20)]
REGIONS = ["global", "UK", "US", "DE"]
_SUBJECTS = ["Employees", "Managers", "Contractors", "The Company", "Each team", "Approvers"]
_VERBS = ["must record", "may claim", "should report", "must not accept", "will review", "can request"]
_OBJECTS = ["travel costs", "gifts above the threshold", "conflicts of interest", "annual leave",
            "security incidents", "customer data", "overtime", "training budgets", "sick days"]
_TAILS = ["within 30 days.", "before the end of the quarter.", "through the approved system.",
          "with written approval from their manager.", "unless the policy owner agrees otherwise.",
          "as described in the appendix."]


def write_synthetic_corpus(root: Path, docs: int, *, seed: int = 13) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        groups = sorted(rng.sample(GROUPS, rng.randint(1, 3)))
        sections = []
        for s in range(rng.randint(4, 8)):
            paras = []
            for _ in range(rng.randint(1, 3)):
                sentences = [
                    f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                    f"(rule {i}.{s}.{rng.randint(1, 999)}) {rng.choice(_TAILS)}"
                    for _ in range(rng.randint(2, 6))
                ]
                paras.append(" ".join(sentences))
            sections.append(f"## {s + 1}. Section {s + 1}\n\n" + "\n\n".join(paras))
        (root / f"doc-{i:04d}.md").write_text(
            "---\n"
            f"id: doc-{i:04d}\ntitle: Synthetic policy {i}\nversion: 1\n"
            f"effective_date: 2025-01-01\nowner: Bench\ngroups: [{', '.join(groups)}]\n"
            f"region: {rng.choice(REGIONS)}\n---\n"
            f"# Synthetic policy {i}\n\n" + "\n\n".join(sections) + "\n",
            encoding="utf-8",
        )


def _run_phase(root: Path, data: Path) -> dict:
    """One `policyrag ingest` process; its report, wall time and `peak_tree_pss_mib`: the peak of
    the summed PSS of it and its children (loader worker, model conversion), sampled every 0.2 s.
    PSS, not RSS: the processes share library pages, which a sum of RSS would count twice."""
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyrag", "ingest", str(root), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak: list[int] = [0]
    sampler = threading.Thread(target=_sample_tree_pss, args=(proc.pid, peak), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}): {err[-2000:]}")
    report = json.loads(out)
    report["wall_seconds"] = round(wall, 2)
    report["peak_tree_pss_mib"] = round(peak[0] / 2**20, 1)
    return report


def _sample_tree_pss(pid: int, peak: list[int]) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except psutil.Error:  # a child that just ended
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.2)
    except psutil.Error:  # the ingest process ended
        return


def _peak_rss_mib(fn) -> tuple[dict, float]:
    """Run fn (which starts one child) and return the child's peak RSS in MiB."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of RUSAGE_CHILDREN is the max over all waited-for children (KiB on Linux)
    return result, max(after, before) / 1024


def run_ingest_benchmark(*, docs: int = 1000, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="policyrag-bench-ingest-"))
    try:
        root, data = work / "docs", work / "data"
        write_synthetic_corpus(root, docs)
        console.print(f"synthetic corpus: {docs} documents in {root}")

        console.print("phase 1: full ingest (baseline: a rebuild without change detection)")
        full, peak = _peak_rss_mib(lambda: _run_phase(root, data))
        console.print("phase 2: unchanged re-ingest")
        unchanged = _run_phase(root, data)
        console.print("phase 3: one document changed")
        target = root / "doc-0007.md"
        target.write_text(target.read_text().replace("Section 1", "Section one (amended)"))
        one = _run_phase(root, data)
        chunks_of_doc = one["chunks_written"]
        return {
            "documents": docs,
            "chunks": full["chunks_written"],
            "full_ingest_seconds": full["wall_seconds"],
            "full_ingest_chunks_per_second": round(full["chunks_written"] / full["seconds"], 1),
            "full_ingest_stage_seconds": full["stage_seconds"],
            "full_ingest_peak_rss_mib": round(peak, 1),
            "full_ingest_peak_tree_pss_mib": full["peak_tree_pss_mib"],
            "unchanged_seconds": unchanged["wall_seconds"],
            "unchanged_embed_calls": unchanged["embed_calls"],
            "unchanged_vs_full_ratio": round(full["wall_seconds"] / unchanged["wall_seconds"], 1),
            "one_changed_seconds": one["wall_seconds"],
            "one_changed_texts_embedded": one["texts_embedded"],
            "one_changed_doc_chunks": chunks_of_doc,
            "one_changed_vs_full_ratio": round(full["wall_seconds"] / one["wall_seconds"], 1),
            "targets": {
                "unchanged_zero_embedding_calls": unchanged["embed_calls"] == 0,
                "unchanged_under_5s": unchanged["wall_seconds"] < 5.0,
                "one_changed_embeds_only_its_chunks": one["texts_embedded"] == chunks_of_doc
                and one["updated"] == ["doc-0007@v1"],
                "peak_memory_under_1.5GiB": max(peak, full["peak_tree_pss_mib"]) < 1536,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_results(results: dict, console: Console) -> None:
    table = Table(title=f"ingest benchmark: {results['documents']} documents, {results['chunks']} chunks")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if key in ("targets", "full_ingest_stage_seconds"):
            continue
        table.add_row(key, str(value))
    for stage, secs in results["full_ingest_stage_seconds"].items():
        table.add_row(f"  stage {stage} (s)", str(secs))
    for name, ok in results["targets"].items():
        table.add_row(f"target {name}", "[green]met[/]" if ok else "[red]MISSED[/]")
    console.print(table)
