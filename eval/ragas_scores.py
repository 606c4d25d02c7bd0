"""ragas metrics for an eval run's rows.

Two kinds:
- the non-LLM ragas metrics, always: ROUGE-L and normalised Levenshtein similarity of the answer
  against the expected answer, and ragas' non-LLM context precision and recall of the retrieved
  passages against the reference contexts (the text of the expected sources);
- the LLM-judged ragas metrics (faithfulness, response relevancy, context precision and context
  recall), only when a judge is configured as an OpenAI-compatible endpoint
  (`POLICYRAG_EVAL_JUDGE_URL`). The judge is driven through instructor in JSON-schema mode, so a
  vLLM judge is constrained to ragas' own output schemas and even a small model's output parses
  (a small judge can still run past its max_tokens: that metric is recorded as failed for that
  item); parseable is not the same as right, and the report says which judge scored the run.

Scores are added to each row under `ragas` and averaged by `summary`.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")  # nothing leaves the machine

from core.settings import Settings  # noqa: E402

NON_LLM = ("rouge_l", "string_similarity", "context_precision", "context_recall")
JUDGED = ("faithfulness", "response_relevancy", "llm_context_precision", "llm_context_recall")


def _value(result: Any) -> float | None:
    value = getattr(result, "value", result)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


class NonLlmScorer:
    """ragas' deterministic metrics; no model, no network."""

    def __init__(self) -> None:
        from ragas.metrics import (
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
        )
        from ragas.metrics.collections import NonLLMStringSimilarity, RougeScore

        self.rouge = RougeScore(rouge_type="rougeL", mode="fmeasure")
        self.similarity = NonLLMStringSimilarity()
        self.context_precision = NonLLMContextPrecisionWithReference()
        self.context_recall = NonLLMContextRecall()

    async def score(self, row: dict[str, Any], references: Sequence[str]) -> dict[str, float | None]:
        from ragas.dataset_schema import SingleTurnSample

        out: dict[str, float | None] = dict.fromkeys(NON_LLM)
        if row["expected_status"] == "answered" and row["expected_answer"]:
            response = row["answer"] or ""
            out["rouge_l"] = _value(await self.rouge.ascore(reference=row["expected_answer"], response=response))
            out["string_similarity"] = _value(await self.similarity.ascore(reference=row["expected_answer"], response=response))
        retrieved = [p["text"] for p in row["passages"] if p.get("text")]
        if references and retrieved:
            sample = SingleTurnSample(retrieved_contexts=retrieved, reference_contexts=list(references))
            out["context_precision"] = _value(await self.context_precision.single_turn_ascore(sample))
            out["context_recall"] = _value(await self.context_recall.single_turn_ascore(sample))
        elif references:  # nothing retrieved (e.g. nothing above the score floor): nothing recalled
            out["context_recall"] = 0.0
        return out


class _Embeddings:
    """The service's own embedding model as a ragas embedding (response relevancy compares
    question embeddings); built lazily so ragas' base class import stays in one place."""

    def __new__(cls, embedder):
        from ragas.embeddings.base import BaseRagasEmbedding

        class Embeddings(BaseRagasEmbedding):
            def embed_text(self, text: str, **kwargs) -> list[float]:
                return list(embedder.embed([text])[0])

            async def aembed_text(self, text: str, **kwargs) -> list[float]:
                return await asyncio.to_thread(self.embed_text, text)

            def embed_texts(self, texts, **kwargs):
                return [list(v) for v in embedder.embed(list(texts))]

            async def aembed_texts(self, texts, **kwargs):
                return await asyncio.to_thread(self.embed_texts, texts)

        return Embeddings()


def judge_info(settings: Settings) -> dict[str, Any] | None:
    if not settings.eval_judge_url:
        return None
    return {"url": settings.eval_judge_url, "model": settings.eval_judge_model,
            "mode": "instructor JSON_SCHEMA (constrained by the server)", "metrics": list(JUDGED),
            "max_items": settings.eval_judge_items}


class JudgeScorer:
    """ragas' LLM-judged metrics through an OpenAI-compatible judge endpoint."""

    def __init__(self, settings: Settings, embedder) -> None:
        import instructor
        from openai import AsyncOpenAI
        from ragas.llms.base import InstructorLLM
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecisionWithReference,
            ContextRecall,
            Faithfulness,
        )

        api_key = settings.eval_judge_api_key.get_secret_value() if settings.eval_judge_api_key else "none"
        client = AsyncOpenAI(base_url=settings.eval_judge_url, api_key=api_key, timeout=settings.generation_timeout_s,
                             max_retries=1)
        llm = InstructorLLM(client=instructor.from_openai(client, mode=instructor.Mode.JSON_SCHEMA),
                            model=settings.eval_judge_model, provider="openai",
                            max_tokens=settings.eval_judge_max_tokens, temperature=0.0)
        self.faithfulness = Faithfulness(llm=llm)
        self.relevancy = AnswerRelevancy(llm=llm, embeddings=_Embeddings(embedder), strictness=1)
        self.context_precision = ContextPrecisionWithReference(llm=llm)
        self.context_recall = ContextRecall(llm=llm)

    async def score(self, row: dict[str, Any], references: Sequence[str]) -> tuple[dict[str, float | None], list[str]]:
        out: dict[str, float | None] = dict.fromkeys(JUDGED)
        errors: list[str] = []
        question, response = row["query"] or row["question"], row["answer"]
        retrieved = [p["text"] for p in row["passages"] if p.get("text")]
        reference = row["expected_answer"] or " ".join(references)

        async def attempt(key: str, call) -> None:
            try:
                out[key] = _value(await call)
            except Exception as exc:  # a judge failure costs this metric for this item, not the run
                errors.append(f"{key}: {type(exc).__name__}: {str(exc)[:160]}")

        if response and retrieved:
            await attempt("faithfulness", self.faithfulness.ascore(user_input=question, response=response,
                                                                   retrieved_contexts=retrieved))
        if response:
            await attempt("response_relevancy", self.relevancy.ascore(user_input=question, response=response))
        if reference and retrieved:
            await attempt("llm_context_precision", self.context_precision.ascore(
                user_input=question, reference=reference, retrieved_contexts=retrieved))
            await attempt("llm_context_recall", self.context_recall.ascore(
                user_input=question, retrieved_contexts=retrieved, reference=reference))
        return out, errors


def add_ragas(rows: list[dict[str, Any]], references: Callable[[dict[str, Any]], list[str]], *,
              judge: JudgeScorer | None = None, judge_items: int | None = None, concurrency: int = 4) -> dict[str, Any]:
    """Score `rows` in place (row["ragas"]); returns the judge's bookkeeping (items, failures)."""
    scorer = NonLlmScorer()
    judged = [r for r in rows if r["answer"]][: judge_items] if judge else []
    judged_ids = {id(r) for r in judged}
    failures: list[dict[str, Any]] = []

    async def one(row: dict[str, Any], gate: asyncio.Semaphore) -> None:
        refs = references(row)
        row["ragas"] = await scorer.score(row, refs)
        if judge and id(row) in judged_ids:
            async with gate:
                scores, errors = await judge.score(row, refs)
            row["ragas"].update(scores)
            if errors:
                failures.append({"id": row["id"], "errors": errors})

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(one(r, gate) for r in rows))

    asyncio.run(main())
    return {"items_judged": len(judged), "failures": failures}


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of each ragas metric over the rows that have it, as `ragas_<name>`."""
    out: dict[str, float | None] = {}
    for key in (*NON_LLM, *JUDGED):
        values = [r["ragas"][key] for r in rows if r.get("ragas") and r["ragas"].get(key) is not None]
        out[f"ragas_{key}"] = round(sum(values) / len(values), 4) if values else None
    return out
