"""`policyrag eval --external DIR`: a real external set through the same answer pipeline.

A set is a folder with `docs/` and `qa.jsonl` (`{id, question, answer | null, evidence, doc_id}`;
`documents.jsonl` optional, for titles), as in ../shared/benchmarks. Its documents are ingested
into their own index under `data/eval/external/<set>/` as public documents (group `public`), read
by one synthetic user who may read them; the promoted adapter and the model backend are the
service's own. Never trained on: tuning reads `policies/` only.

Mapping to the gold schema: an item with an answer is `answered` with its document as the
expected source and the answer span as the expected answer; `answer: null` (CUAD: clause absent)
is `refused`/`not_in_policy`. The evidence spans are the reference contexts of the ragas context
metrics. The sets' questions do not name their document ("Does the company collect user's
computer information?" is asked of 20 policies), so the question sent names it, as
LegalBench-RAG's queries do. A run is saved like a gold run, under its own set hash, so it never
counts for the promotion gate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from answer.pipeline import AnswerPipeline
from core.errors import ConfigError
from core.settings import Settings
from eval.eval_run import EvalRun
from eval.gold import EvalSet, GoldItem
from eval.runner import run_eval

READER = "external-reader"


def set_folders(path: Path) -> list[Path]:
    """`path` itself when it is a set, else every set folder directly under it."""
    if (path / "qa.jsonl").exists():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "qa.jsonl").exists()) if path.is_dir() else []
    if not found:
        raise ConfigError(f"no external set at {path}: expected a folder with docs/ and qa.jsonl (or folders of them)")
    return found


def evidence_texts(item: dict[str, Any]) -> list[str]:
    """A QA item's evidence spans (a string, or a list of strings or {text} objects)."""
    ev = item.get("evidence")
    if not ev:
        return []
    if isinstance(ev, str):
        return [ev]
    return [e["text"] if isinstance(e, dict) else str(e) for e in ev]


def load_external_set(folder: Path) -> tuple[EvalSet, dict[str, list[str]]]:
    """The set as gold items, and each item's evidence spans."""
    qa_path = folder / "qa.jsonl"
    if not (folder / "docs").is_dir():
        raise ConfigError(f"external set {folder} has no docs/ folder; it needs docs/ and qa.jsonl")
    titles = {}
    if (folder / "documents.jsonl").exists():
        for line in (folder / "documents.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc = json.loads(line)
                titles[doc["doc_id"]] = doc.get("title") or Path(doc.get("cuad_filename") or doc["doc_id"]).stem
    raw = qa_path.read_bytes()
    items, evidence = [], {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            qa = json.loads(line)
            doc_id, question = qa["doc_id"], qa["question"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f"{qa_path} line {number} is not a QA item ({exc}); it needs id, question, doc_id") from None
        answer = qa.get("answer")
        expected = ({"status": "answered", "answer": answer, "sources": [{"doc_id": doc_id}]} if answer
                    else {"status": "refused", "reason": "not_in_policy"})
        items.append(GoldItem.model_validate({
            "id": qa["id"], "category": "answerable" if answer else "not_in_policy", "user": READER,
            "question": f"{question} (in {titles.get(doc_id, doc_id)})", "expected": expected,
        }))
        evidence[qa["id"]] = evidence_texts(qa)
    if not items:
        raise ConfigError(f"{qa_path} holds no items")
    return EvalSet(f"external:{folder.name}", qa_path, tuple(items), hashlib.sha256(raw).hexdigest()), evidence


def external_index(settings: Settings, folder: Path, *, embedder, scrubber=None):
    """Ingest the set's documents into their own index (incremental: a re-run reuses it)."""
    from ingest.pipeline import Ingestor

    ext = settings.model_copy(update={"data_dir": settings.data_dir / "eval" / "external" / folder.name,
                                      "store_url": None})
    ingestor = Ingestor(ext, embedder=embedder, scrubber=scrubber)
    report = ingestor.run(folder / "docs", default_groups=["public"])
    if report.rejected:
        raise ConfigError(f"external set {folder.name}: {len(report.rejected)} documents were rejected at ingest "
                          f"(first: {report.rejected[0]}); fix or remove them")
    return ingestor


def run_external(settings: Settings, folder: Path, *, service, adapter: str = "promoted", baseline: str | None = None,
                 limit: int | None = None, on_stage=lambda s: None, on_item=lambda row: None) -> EvalRun:
    from retrieval.directory import Directory, DirectoryUser
    from retrieval.retriever import Retriever

    eval_set, evidence = load_external_set(folder)
    on_stage(f"{folder.name}: indexing its documents")
    embedder = service.pipeline.retriever.embedder
    ingestor = external_index(settings, folder, embedder=embedder)
    try:
        directory = Directory(users={READER: DirectoryUser(name="external set reader", groups=("public",), region="global")},
                              groups={"public": "the external set's documents"})
        retriever = Retriever(ingestor.store, embedder, directory, score_floor=settings.retrieval_score_floor,
                              mmr_lambda=settings.retrieval_mmr_lambda, hnsw_ef=settings.retrieval_hnsw_ef,
                              hybrid_hnsw_ef=settings.retrieval_hybrid_hnsw_ef)
        pipeline = AnswerPipeline(settings, retriever, service.backend, service.pipeline.registry,
                                  base_model=service.pipeline.base_model)
        scrub = ingestor.scrubber.scrub
        scrubbed = {item_id: [scrub(text)[0] for text in spans] for item_id, spans in evidence.items()}
        return run_eval(settings, service=SimpleNamespace(pipeline=pipeline, backend=service.backend),
                        adapter=adapter, baseline=baseline, eval_set=eval_set, limit=limit,
                        references=lambda row: scrubbed.get(row["id"], []),
                        external={"folder": str(folder), "documents": len(list((folder / "docs").iterdir())),
                                  "note": "public documents in their own index; questions name their document"},
                        on_stage=on_stage, on_item=on_item)
    finally:
        ingestor.close()
