"""Retrieval quality on the external sets in ../shared/benchmarks (never tuned on).

Each set's documents are ingested into a separate, throw-away index as public documents (one
group, `public`); every question with evidence is searched dense, sparse and hybrid. A hit@k is
counted when the (PII-scrubbed, whitespace-normalized) evidence span is contained in one of the
top-k passages ("contained"), or, for evidence longer than a passage, when a top-k passage lies
inside the evidence ("overlap"). The score floor is off: this measures ranking.

Two scopes: `corpus` searches every document of the set; `document` narrows the search to the
question's own document (a caller filter on doc_id). The sets' questions do not name their
document ("Does the company collect user's computer information?" is asked of 20 policies),
while LegalBench-RAG's queries do, so `document` is the closer comparison to its figures.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.settings import PROJECT_ROOT, Settings
from eval.external import evidence_texts
from ingest.pipeline import Ingestor
from retrieval.acl import Principal, SearchFilters
from retrieval.directory import Directory
from retrieval.retriever import Retriever

DEFAULT_SETS = PROJECT_ROOT.parent / "shared" / "benchmarks"
KS = (1, 5, 10)
MODES = ("dense", "sparse", "hybrid")
SCOPES = ("corpus", "document")
# LegalBench-RAG (arXiv 2408.10343), character-span recall@64, text-embedding-3-large,
# recursive splitter, no reranker, as listed in ../shared/benchmarks/README.md
REFERENCE = {"policyqa_opp115": "PrivacyQA recall@64 84.2%", "cuad_contracts": "CUAD recall@64 74.7%"}


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def evaluate_set(folder: Path, *, console: Console, limit: int | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="policyrag-bench-quality-"))
    try:
        settings = Settings(data_dir=work / "data")
        ing = Ingestor(settings)
        report = ing.run(folder / "docs", default_groups=["public"])
        console.print(f"  {folder.name}: {len(report.added)} documents, {report.chunks_written} chunks, "
                      f"{len(report.rejected)} rejected")
        retriever = Retriever(ing.store, ing.embedder, Directory(users={}), score_floor=-1.0)
        who = Principal("benchmark", ("public",), "global")
        items = [json.loads(line) for line in (folder / "qa.jsonl").read_text().splitlines() if line.strip()]
        items = [i for i in items if evidence_texts(i)][:limit]
        hits = {
            (scope, m): {k: {"contained": 0, "overlap": 0} for k in KS}
            for scope in SCOPES
            for m in MODES
        }
        for item in items:
            evidence = [_norm(ing.scrubber.scrub(e)[0]) for e in evidence_texts(item)]
            for scope in SCOPES:
                narrow = SearchFilters(doc_ids=(item["doc_id"],)) if scope == "document" else None
                for mode in MODES:
                    passages = retriever.search(item["question"], who, k=max(KS), mode=mode, filters=narrow)
                    for k in KS:
                        texts = [_norm(p.text) for p in passages[:k]]
                        contained = any(e in t for e in evidence for t in texts)
                        overlap = contained or any(len(e) > len(t) and t in e for e in evidence for t in texts)
                        hits[(scope, mode)][k]["contained"] += contained
                        hits[(scope, mode)][k]["overlap"] += overlap
        n = len(items)
        ing.close()
        return {
            "questions_with_evidence": n,
            "chunks": report.chunks_written,
            "hit_rate": {
                f"{scope}/{m}": {
                    f"@{k}": {kind: round(v / n, 3) for kind, v in hits[(scope, m)][k].items()}
                    for k in KS
                }
                for scope in SCOPES
                for m in MODES
            },
            "reference": REFERENCE.get(folder.name, ""),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_quality_benchmark(sets_dir: Path = DEFAULT_SETS, *, console: Console | None = None, limit: int | None = None) -> dict:
    console = console or Console(stderr=True)
    if not sets_dir.is_dir():
        raise FileNotFoundError(f"no benchmark sets at {sets_dir}; pass --sets PATH")
    out = {}
    for folder in sorted(p for p in sets_dir.iterdir() if (p / "qa.jsonl").exists()):
        out[folder.name] = evaluate_set(folder, console=console, limit=limit)
    return out


def print_quality_results(results: dict, console: Console) -> None:
    for name, data in results.items():
        table = Table(title=f"{name}: evidence in top-k ({data['questions_with_evidence']} questions, "
                            f"{data['chunks']} chunks); reference: {data['reference']}")
        table.add_column("scope/mode")
        for k in KS:
            table.add_column(f"@{k} contained", justify="right")
            table.add_column(f"@{k} overlap", justify="right")
        for mode, by_k in data["hit_rate"].items():
            row = [mode]
            for k in KS:
                row += [f"{by_k[f'@{k}']['contained']:.1%}", f"{by_k[f'@{k}']['overlap']:.1%}"]
            table.add_row(*row)
        console.print(table)
