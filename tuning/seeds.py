"""Hand-written training seeds (`policies/_tuning/seeds.yaml`): question -> expected behaviour.

Kept apart from the gold eval set, which tuning never reads; see `check_gold_overlap`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError, PolicyRagError

SeedKind = Literal["answered", "not_in_policy", "no_source", "out_of_scope", "escalate"]


class GoldOverlapError(PolicyRagError):
    """A seed question is a near-duplicate of a gold eval question: tuning on it would leak."""

    code = "gold_overlap"
    http_status = 422


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: SeedKind
    user: str
    question: str = Field(min_length=3)
    paraphrases: tuple[str, ...] = ()
    answer: str | None = None
    doc_id: str | None = None
    quote: str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Seed:
        needs = {
            "answered": ("answer", "doc_id", "quote"),
            "escalate": ("answer",),
            "not_in_policy": ("doc_id",),
        }.get(self.kind, ())
        missing = [name for name in needs if not getattr(self, name)]
        if missing:
            raise ValueError(f"a {self.kind} seed needs {', '.join(missing)}")
        if self.kind in ("not_in_policy", "no_source", "out_of_scope") and (self.answer or self.quote):
            raise ValueError(f"a {self.kind} seed is a refusal: remove answer and quote")
        if self.quote and not self.doc_id:
            raise ValueError("a quote needs the doc_id it comes from")
        return self

    @property
    def questions(self) -> tuple[str, ...]:
        return (self.question, *self.paraphrases)


def load_seeds(path: Path) -> list[Seed]:
    """All seeds of the file, or of every `*.yaml` in the folder (in name order; ids unique
    across files); raises ConfigError naming every bad item (by file, position and id)."""
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"seed folder {path} holds no *.yaml file; set POLICYRAG_TUNING_SEEDS_FILE")
    seeds: list[Seed] = []
    problems: list[str] = []
    seen: set[str] = set()
    for file in files:
        seeds += _load_seed_file(file, problems, seen)
    if problems:
        raise ConfigError(f"seed file {path} has {len(problems)} bad item(s); fix them: " + "; ".join(problems[:10]))
    return seeds


def _load_seed_file(path: Path, problems: list[str], seen: set[str]) -> list[Seed]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"seed file {path} not found; set POLICYRAG_TUNING_SEEDS_FILE") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"seed file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"seed file {path} must be a non-empty YAML list of seeds")
    seeds = []
    for position, item in enumerate(raw, start=1):
        label = item.get("id", "?") if isinstance(item, dict) else "?"
        try:
            seed = Seed.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            problems.append(f"{path.name} item {position} ({label}): {where}: {first['msg']}")
            continue
        if seed.id in seen:
            problems.append(f"{path.name} item {position}: duplicate seed id {seed.id!r}")
        seen.add(seed.id)
        seeds.append(seed)
    return seeds


def load_gold_questions(path: Path) -> dict[str, str]:
    """{item id: question} of the gold eval set (JSONL; multi-turn items list their turns)."""
    if not path.exists():
        return {}
    questions: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"gold set {path} line {number} is not JSON: {exc.msg}") from None
        item_id = str(item.get("id", number))
        if item.get("question"):
            questions[item_id] = item["question"]
        for turn_no, turn in enumerate(item.get("turns") or [], start=1):
            text = turn.get("question") if isinstance(turn, dict) else turn
            if text:
                questions[f"{item_id}#{turn_no}"] = text
    return questions


def check_gold_overlap(seeds: list[Seed], gold: dict[str, str], embed, threshold: float) -> None:
    """Refuse to go on if any seed question (or paraphrase) is within `threshold` cosine of a
    gold question. `embed` maps texts to unit vectors."""
    if not gold:
        return
    import numpy as np

    seed_texts = [(seed.id, q) for seed in seeds for q in seed.questions]
    a = np.asarray(embed([q for _, q in seed_texts]), dtype=np.float32)
    gold_items = list(gold.items())
    b = np.asarray(embed([q for _, q in gold_items]), dtype=np.float32)
    sims = a @ b.T
    hits = np.argwhere(sims >= threshold)
    if len(hits):
        lines = [
            f"seed {seed_texts[i][0]!r} ({seed_texts[i][1]!r}) ~ gold {gold_items[j][0]!r} "
            f"({gold_items[j][1]!r}), cosine {sims[i, j]:.2f}"
            for i, j in hits[:5]
        ]
        raise GoldOverlapError(
            f"{len(hits)} seed question(s) are near-duplicates of gold eval questions "
            f"(cosine >= {threshold}); reword or remove the seeds: " + "; ".join(lines)
        )
