"""`policyrag eval`: the gold set through the real answer pipeline, scored item by item.

A run is saved under `data/eval/runs/<run id>/`: `run.json` (versions, summary, baseline and
deltas) and `items.jsonl` (question, expected, got, citations, retrieved passages, scores), plus
the run's own audit log. The promotion gate and the report read only these files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from answer.audit import AuditLog
from answer.backends import BackendUnavailable
from answer.pipeline import AnswerPipeline, AnswerResult
from core.contract import render_answer
from core.errors import ConfigError
from core.settings import Settings
from eval.eval_run import EvalRun
from eval.gold import EvalSet, GoldItem, load_gold_set
from eval.metrics import (
    COMPARED,
    aggregate,
    citation_scores,
    exact_match,
    leaked,
    matches,
    retrieval_scores,
    token_f1,
)
from eval.ragas_scores import JudgeScorer, add_ragas, judge_info
from eval.ragas_scores import summary as ragas_summary
from retrieval.acl import may_read
from retrieval.store import ChunkPayload, stored_chunks


def runs_dir(settings: Settings) -> Path:
    return settings.data_dir / "eval" / "runs"


@dataclass(frozen=True)
class DocInfo:
    doc_id: str
    title: str
    version: str
    groups: frozenset[str]
    region: str
    text: str = ""  # the indexed text, lower-cased (a readable document may name a restricted one)


def corpus_docs(chunks: Sequence[ChunkPayload]) -> dict[str, DocInfo]:
    """Every indexed document with its access metadata and text, from the store's chunks."""
    by_doc: dict[str, list[ChunkPayload]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    return {doc_id: DocInfo(doc_id, parts[0].title, parts[0].version, frozenset(parts[0].groups), parts[0].region,
                            "\n".join(c.text for c in sorted(parts, key=lambda c: c.chunk_index)).lower())
            for doc_id, parts in by_doc.items()}


def corpus_version(docs: dict[str, DocInfo]) -> str:
    text = "\n".join(f"{d.doc_id}@{d.version}" for d in sorted(docs.values(), key=lambda d: d.doc_id))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_contexts(chunks: Sequence[ChunkPayload]) -> Callable[[dict[str, Any]], list[str]]:
    """For a row, the text of every indexed chunk that is one of its expected sources (the
    reference contexts of ragas' context metrics)."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append({"doc_id": c.doc_id, "section": list(c.section), "text": c.text})

    def references(row: dict[str, Any]) -> list[str]:
        return [c["text"] for s in row["expected_sources"] for c in by_doc.get(s["doc_id"], []) if matches(c, s)]

    return references


def unreadable(principal, docs: dict[str, DocInfo]) -> list[str]:
    """Titles and citation prefixes of documents this principal may not read (leak markers),
    minus any that a document they may read states itself: a public policy may name a restricted
    one ("covered by the Executive Compensation Policy"), and showing that is no leak."""
    readable = "\n".join(d.text for d in docs.values() if may_read(principal, tuple(d.groups), d.region))
    out = []
    for d in docs.values():
        if not may_read(principal, tuple(d.groups), d.region):
            out += [m for m in (d.title, f"{d.doc_id}@v") if m.lower() not in readable]
    return out


def response_text(result: AnswerResult) -> str:
    """What the asker sees: the answer, reason and citations (not their own question echoed)."""
    shown = {k: v for k, v in result.to_json().items() if k in ("status", "answer", "reason", "citations")}
    return json.dumps(shown, ensure_ascii=False)


def score_item(item: GoldItem, result: AnswerResult, forbidden: list[str], k: int) -> dict[str, Any]:
    expected = item.expected
    sources = [s.model_dump() for s in expected.sources]
    passages = [{"doc_id": p.doc_id, "title": p.title, "section": list(p.section_path), "id": p.citation_id, "label": p.label,
                 "score": round(p.score, 6), "relevance": round(p.relevance or 0.0, 4), "text": p.text}
                for p in result.passages]
    cited = [{"doc_id": c.doc_id, "section": list(c.section), "id": c.id, "quote": c.quote, "label": c.label}
             for c in result.citations]
    answer = result.answer
    leaks = leaked(response_text(result), [*item.forbidden, *forbidden])
    row = {
        "id": item.id, "category": item.category, "forms": list(item.forms), "user": item.user,
        "question": item.question, "turns": list(item.turns), "query": result.query,
        "expected_status": expected.status, "expected_reason": expected.reason,
        "expected_answer": expected.answer, "expected_sources": sources,
        "status": answer.status, "reason": answer.reason, "answer": answer.answer,
        "rendered": render_answer(answer), "citations": cited, "passages": passages,
        "status_ok": answer.status == expected.status,
        "reason_ok": answer.status == expected.status and (answer.reason or None) == expected.reason,
        "schema_valid": bool(result.schema_valid) if result.model_called else True,
        "model_called": result.model_called, "repaired": bool(result.repairs), "repairs": result.repairs[:4],
        "raw_citations": result.raw_citations, "raw_valid_citations": result.raw_valid_citations,
        "raw_text": result.raw_text, "status_decision": result.status_decision,
        "exact_match": exact_match(answer.answer, expected.answer) if expected.status == "answered" else None,
        "token_f1": token_f1(answer.answer, expected.answer) if expected.answer else None,
        "leaks": leaks,
        "retrieval": retrieval_scores(passages, sources, k) if sources else None,
        "latency_ms": result.latency_ms["total"],
        "completion_tokens": result.usage["completion_tokens"],
    }
    if expected.status == "answered":
        scores = citation_scores(cited, sources)
        row["citation_precision"], row["citation_recall"] = scores["precision"], scores["recall"]
    else:
        row["citation_precision"] = row["citation_recall"] = None
    return row


def evaluate(pipeline: AnswerPipeline, eval_set: EvalSet, docs: dict[str, DocInfo], *, adapter: str,
             limit: int | None = None, concurrency: int = 1, constrained: bool = True,
             on_item: Callable[[dict], None] = lambda row: None) -> list[dict[str, Any]]:
    items = list(eval_set.items)[:limit] if limit else list(eval_set.items)
    # the leak markers depend only on the asker: worked out once per user, not per item
    markers = {user: unreadable(pipeline.retriever.principal(user), docs) for user in {i.user for i in items}}

    def one(item: GoldItem) -> dict[str, Any]:
        principal = pipeline.retriever.principal(item.user)
        for attempt in range(3):  # a busy or restarting model server costs a retry, not the run
            try:
                result = pipeline.answer(principal, item.question, history=item.turns, endpoint="eval",
                                         adapter_version=adapter, constrained=constrained)
                break
            except BackendUnavailable:
                if attempt == 2:
                    raise
                time.sleep(10 * (attempt + 1))
        row = score_item(item, result, markers[item.user], pipeline.settings.answer_passages)
        on_item(row)
        return row

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(one, items))


def run_eval(settings: Settings, *, service, adapter: str = "promoted", baseline: str | None = None,
             set_path: Path | None = None, limit: int | None = None, unconstrained: int = 0,
             eval_set: EvalSet | None = None, references: Callable[[dict[str, Any]], list[str]] | None = None,
             external: dict[str, Any] | None = None,
             on_stage: Callable[[str], None] = lambda s: None,
             on_item: Callable[[dict], None] = lambda row: None) -> EvalRun:
    """Run the set for `adapter` (and `baseline`), save the run (run.json, items.jsonl), return it.

    `eval_set`/`references`/`external` are for the external sets (eval.external): their own
    items, their evidence as reference contexts, and a note on where they came from."""
    eval_set = eval_set or load_gold_set(set_path or settings.gold_set_file)
    registry = service.pipeline.registry
    version = registry.promoted_version() if adapter == "promoted" else adapter
    if version is None:
        version = "base"
    if version != "base":
        registry.load(version)  # unknown or corrupted: fail before the run
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    folder = runs_dir(settings) / run_id
    folder.mkdir(parents=True)
    pipeline = AnswerPipeline(settings, service.pipeline.retriever, service.backend, registry,
                              AuditLog(folder / "audit"), base_model=service.pipeline.base_model)
    concurrency = 8 if service.backend.name == "vllm" else 1
    chunks = list(stored_chunks(service.pipeline.retriever.store))  # read once per run
    docs = corpus_docs(chunks)
    base_version = registry.promoted_version() if baseline == "promoted" else baseline
    if baseline == "promoted" and base_version is None:
        raise ConfigError("--baseline promoted, but no adapter is promoted; use --baseline base or a version")

    references = references or reference_contexts(chunks)
    judge = JudgeScorer(settings, service.pipeline.retriever.embedder) if settings.eval_judge_url else None

    from answer.merged import MergedRouter

    serving = None
    if version != "base" and isinstance(service.backend, MergedRouter):  # measured as it would be served
        on_stage(f"{version}: starting its merged server (run-time LoRA if that fails)")
        merged = service.backend.serve_merged(pipeline.current_adapter(version), wait_s=settings.vllm_start_timeout_s + 120)
        serving = "merged" if merged else "lora"
    elif version != "base" and service.backend.name == "vllm":
        serving = "lora"
    on_stage(f"{version}: {limit or len(eval_set.items)} items")
    try:
        rows = evaluate(pipeline, eval_set, docs, adapter=version, limit=limit, concurrency=concurrency, on_item=on_item)
    finally:
        if serving == "merged":
            service.backend.serve_merged(None)  # back to following promotions
    if judge:
        on_stage(f"{version}: ragas metrics, judged by {settings.eval_judge_model} at {settings.eval_judge_url}")
    judged = add_ragas(rows, references, judge=judge, judge_items=settings.eval_judge_items)
    summary = {**aggregate(rows), **ragas_summary(rows)}
    if unconstrained:
        on_stage(f"{version}: schema validity without constrained decoding ({unconstrained} items)")
        free = evaluate(pipeline, eval_set, docs, adapter=version, limit=unconstrained, concurrency=concurrency, constrained=False)
        generated = [r for r in free if r["model_called"]]
        summary["schema_validity_unconstrained"] = round(sum(r["schema_valid"] for r in generated) / len(generated), 4) if generated else None
    with open(folder / "items.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"run": "candidate", **row}, ensure_ascii=False) + "\n")
    baseline_summary = None
    if base_version:
        on_stage(f"baseline {base_version}: {limit or len(eval_set.items)} items")
        base_rows = evaluate(pipeline, eval_set, docs, adapter=base_version, limit=limit, concurrency=concurrency)
        add_ragas(base_rows, references)  # the judge scores the candidate only (its cost is per item)
        baseline_summary = {**aggregate(base_rows), **ragas_summary(base_rows)}
        with open(folder / "items.jsonl", "a", encoding="utf-8") as handle:
            for row in base_rows:
                handle.write(json.dumps({"run": "baseline", **row}, ensure_ascii=False) + "\n")
    manifest = registry.load(version).manifest if version != "base" else None
    out = EvalRun.model_validate({
        "run_id": run_id,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "adapter": version,
        "baseline": base_version,
        "complete": limit is None or limit >= len(eval_set.items),
        "set": {"name": eval_set.name, "path": str(eval_set.path), "hash": eval_set.hash,
                "items": len(eval_set.items), "evaluated": len(rows)},
        "versions": {
            "base_model": service.pipeline.base_model.as_dict() if service.pipeline.base_model else None,
            "adapter": version,
            "dataset": manifest.dataset_hash if manifest else None,
            "eval_set": eval_set.hash,
            "corpus": corpus_version(docs),
            "documents": {d.doc_id: d.version for d in sorted(docs.values(), key=lambda d: d.doc_id)},
            "prompt": pipeline.fingerprint,
            "backend": service.backend.name,
            "serving": serving,
        },
        "summary": summary,
        "judge": {**judge_info(settings), **judged} if judge else None,
        "external": external,
        "baseline_summary": baseline_summary,
        "deltas": {m: round(summary[m] - baseline_summary[m], 4) for m in COMPARED
                   if baseline_summary and summary.get(m) is not None and baseline_summary.get(m) is not None},
    })
    (folder / "run.json").write_text(json.dumps(out.to_json(), indent=2, ensure_ascii=False) + "\n")
    return out


def load_run(settings: Settings, run_id: str | None = None) -> tuple[EvalRun, list[dict[str, Any]]]:
    """A saved run (default: the latest) and its item rows."""
    root = runs_dir(settings)
    runs = sorted(p.name for p in root.iterdir() if (p / "run.json").exists()) if root.exists() else []
    if not runs:
        raise ConfigError(f"no eval run in {root}; run `policyrag eval` first")
    if run_id is None:
        run_id = runs[-1]
    if run_id not in runs:
        raise ConfigError(f"no eval run {run_id!r} in {root} (latest: {runs[-1]})")
    folder = root / run_id
    run = read_run(folder / "run.json")
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return run, rows


def read_run(path: Path) -> EvalRun:
    try:
        return EvalRun.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"eval run {path.parent.name} cannot be read ({exc}); re-run `policyrag eval` or remove {path.parent}") from None


def all_runs(settings: Settings) -> list[EvalRun]:
    root = runs_dir(settings)
    if not root.exists():
        return []
    return [read_run(p / "run.json") for p in sorted(root.iterdir()) if (p / "run.json").exists()]


def latest_complete_run(settings: Settings, version: str, set_hash: str) -> EvalRun | None:
    """The newest complete run of `version` on the eval set with this hash."""
    runs = [r for r in all_runs(settings) if r.adapter == version and r.set.hash == set_hash and r.complete]
    return runs[-1] if runs else None
