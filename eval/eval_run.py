"""`EvalRun`: what one eval run was and what it measured (`data/eval/runs/<run id>/run.json`).

Written by the runner, read by the gate, the report, the review, the checklist and `policyrag up`;
validated on both sides, so a run that cannot be read is a clear error, not a KeyError deep in a
report. The per-item rows (`items.jsonl`) stay plain records: each metric module owns its fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EvalSetRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    path: str
    hash: str = Field(description="sha256 of the set file: the gate only counts runs on the current set")
    items: int
    evaluated: int


class RunVersions(BaseModel):
    """Every artifact the answers came from."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    base_model: dict[str, Any] | None = None
    adapter: str
    dataset: str | None = None
    eval_set: str
    corpus: str
    documents: dict[str, str] = Field(default_factory=dict)
    prompt: str | None = None
    backend: str | None = None
    serving: str | None = Field(None, description="how the adapter was served: merged into its base weights, or run-time LoRA")


class EvalRun(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str
    at: str
    adapter: str = Field(description="an adapter version, or 'base'")
    baseline: str | None = None
    complete: bool = Field(description="every item of the set was evaluated (only complete runs count for the gate)")
    set: EvalSetRef
    versions: RunVersions
    summary: dict[str, Any] = Field(description="metric -> value (eval/metrics.py, eval/ragas_scores.py)")
    judge: dict[str, Any] | None = None
    external: dict[str, Any] | None = None
    baseline_summary: dict[str, Any] | None = None
    deltas: dict[str, float] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
