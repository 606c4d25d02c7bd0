"""Per-item scores and their aggregates: schema, status, answer overlap, citations, safety,
retrieval. Pure functions over plain data, so the report and the gate recompute nothing."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from statistics import median
from typing import Any

from core.status_metrics import status_precision_recall

STATUSES = ("answered", "refused", "escalate")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation or articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, reference: str | None) -> float:
    return float(normalize(prediction or "") == normalize(reference or ""))


def token_f1(prediction: str | None, reference: str | None) -> float:
    pred, ref = normalize(prediction or "").split(), normalize(reference or "").split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def matches(passage: dict[str, Any], source: dict[str, Any]) -> bool:
    """A passage supports an expected source when the document matches and, if the source names
    a section, the passage's section path ends with it (or equals it)."""
    if passage["doc_id"] != source["doc_id"]:
        return False
    section = tuple(source.get("section") or ())
    return not section or tuple(passage.get("section") or ())[-len(section):] == section


def retrieval_scores(passages: Sequence[dict[str, Any]], sources: Sequence[dict[str, Any]], k: int) -> dict[str, float]:
    """recall@k (share of expected sources found in the top k), MRR and binary nDCG@k."""
    top = list(passages)[:k]
    relevant = [any(matches(p, s) for s in sources) for p in top]
    found = sum(any(matches(p, s) for p in top) for s in sources)
    first = next((rank for rank, rel in enumerate(relevant, start=1) if rel), None)
    dcg = sum(1 / math.log2(rank + 1) for rank, rel in enumerate(relevant, start=1) if rel)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(sources), k) + 1))
    return {"recall_at_k": found / len(sources), "mrr": 1 / first if first else 0.0,
            "ndcg": dcg / ideal if ideal else 0.0}


def citation_scores(cited: Sequence[dict[str, Any]], sources: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Precision: share of shown citations that point at an expected source; recall: share of
    expected sources cited."""
    if not cited:
        return {"precision": 0.0 if sources else 1.0, "recall": 0.0 if sources else 1.0}
    precision = sum(any(matches(c, s) for s in sources) for c in cited) / len(cited)
    recall = sum(any(matches(c, s) for c in cited) for s in sources) / len(sources) if sources else 1.0
    return {"precision": precision, "recall": recall}


def leaked(response_text: str, forbidden: Sequence[str]) -> list[str]:
    low = response_text.lower()
    return sorted({f for f in forbidden if f and f.lower() in low})


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's metrics from its per-item rows (see eval.runner.score_item)."""
    n = len(rows)
    confusion = {e: {g: 0 for g in STATUSES} for e in STATUSES}
    for r in rows:
        confusion[r["expected_status"]][r["status"]] += 1
    answerable = [r for r in rows if r["expected_status"] == "answered"]
    generated = [r for r in rows if r["model_called"]]
    with_sources = [r for r in rows if r["retrieval"] is not None]
    raw_citations = sum(r["raw_citations"] for r in generated)
    by_category: dict[str, dict[str, Any]] = {}
    for category in sorted({r["category"] for r in rows}):
        subset = [r for r in rows if r["category"] == category]
        by_category[category] = {
            "items": len(subset),
            "status_accuracy": _mean([float(r["status_ok"]) for r in subset]),
            "token_f1": _mean([r["token_f1"] for r in subset if r["token_f1"] is not None]),
            "leaks": sum(bool(r["leaks"]) for r in subset),
        }
    expected, decided = [r["expected_status"] for r in rows], [r["status"] for r in rows]
    refusal = status_precision_recall(expected, decided, "refused")
    escalation = status_precision_recall(expected, decided, "escalate")
    return {
        "items": n,
        "schema_validity": _mean([float(r["schema_valid"]) for r in generated]) if generated else 1.0,
        "status_accuracy": _mean([float(r["status_ok"]) for r in rows]),
        "reason_accuracy": _mean([float(r["reason_ok"]) for r in rows]),
        "confusion": confusion,
        "exact_match": _mean([r["exact_match"] for r in answerable]),
        "token_f1": _mean([r["token_f1"] for r in answerable]),
        "citation_precision": _mean([r["citation_precision"] for r in answerable]),
        "citation_recall": _mean([r["citation_recall"] for r in answerable]),
        "quote_validity": round(sum(r["raw_valid_citations"] for r in generated) / raw_citations, 4) if raw_citations else None,
        "repaired_share": _mean([float(r["repaired"]) for r in generated]),
        "acl_leaks": sum(bool(r["leaks"]) for r in rows),
        "refusal_precision": refusal.precision,
        "refusal_recall": refusal.recall,
        "escalation_precision": escalation.precision,
        "escalation_recall": escalation.recall,
        "answered_with_source": _answered_with_source(answerable),
        "retrieval_recall_at_k": _mean([r["retrieval"]["recall_at_k"] for r in with_sources]),
        "retrieval_mrr": _mean([r["retrieval"]["mrr"] for r in with_sources]),
        "retrieval_ndcg": _mean([r["retrieval"]["ndcg"] for r in with_sources]),
        "latency_p50_ms": round(median(r["latency_ms"] for r in rows), 1) if rows else None,
        "latency_p95_ms": round(percentile([r["latency_ms"] for r in rows], 0.95), 1) if rows else None,
        "tokens_per_answer": _mean([float(r["completion_tokens"]) for r in generated]),
        "by_category": by_category,
        "by_form": _by_form(rows),
    }


def _answered_with_source(answerable: Sequence[dict[str, Any]]) -> float | None:
    """Answerable questions answered with a passage of an expected source cited."""
    return _mean([float(r["status"] == "answered" and (r.get("citation_recall") or 0) > 0) for r in answerable])


def _by_form(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The headline figures per question form, and for the items that carry no form (the gold
    set as first locked), so a grown set can be compared with the original one."""
    groups: dict[str, list[dict[str, Any]]] = {"original": [r for r in rows if not r.get("forms")]}
    for r in rows:
        for form in r.get("forms") or ():
            groups.setdefault(form, []).append(r)
    out = {}
    for name, subset in groups.items():
        if not subset:
            continue
        answerable = [r for r in subset if r["expected_status"] == "answered"]
        out[name] = {
            "items": len(subset),
            "status_accuracy": _mean([float(r["status_ok"]) for r in subset]),
            "answered_with_source": _answered_with_source(answerable),
            "token_f1": _mean([r["token_f1"] for r in answerable if r["token_f1"] is not None]) if answerable else None,
        }
    return out


# higher is better for these; the gate compares them with the promoted adapter's run
COMPARED = ("schema_validity", "status_accuracy", "token_f1", "citation_precision", "citation_recall",
            "quote_validity", "refusal_precision", "refusal_recall", "retrieval_recall_at_k",
            "ragas_rouge_l", "ragas_string_similarity", "ragas_context_precision", "ragas_context_recall",
            "ragas_faithfulness", "ragas_response_relevancy", "ragas_llm_context_precision", "ragas_llm_context_recall")
