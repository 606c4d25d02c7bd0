"""The gold eval set (`policies/_eval/gold.jsonl`): loading, validation and its content hash.

The hash (sha256 of the file's bytes) is the eval-set version: it is recorded with every eval run
and every adapter manifest, and the promotion gate only accepts runs on the current hash, so
changing the set is a deliberate act that invalidates earlier results. Tuning never reads this
file (it only checks seed questions against its questions for overlap).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError

Category = Literal["answerable", "not_in_policy", "no_source", "out_of_scope", "restricted",
                   "personal_case", "version_sensitive", "multi_turn"]
# how the question is asked (the forms real users use; an item may have several): the situation
# first then "does the rule apply to me?" (answered with the policy's conditions, unless it needs a
# person's decision: then escalate), a yes/no question, a number, a deadline, a follow-up turn
Form = Literal["situation_first", "yes_no", "number", "deadline", "follow_up"]


class GoldSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    doc_id: str
    section: tuple[str, ...] = ()
    quote: str | None = None


class GoldExpected(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["answered", "refused", "escalate"]
    reason: Literal["not_in_policy", "no_authorized_source", "out_of_scope", "needs_human"] | None = None
    answer: str | None = None
    sources: tuple[GoldSource, ...] = ()

    @model_validator(mode="after")
    def _consistent(self):
        if self.status == "answered" and (self.reason is not None or not self.sources or not self.answer):
            raise ValueError("answered needs an answer and at least one source, and no reason")
        if self.status == "refused" and self.reason not in ("not_in_policy", "no_authorized_source", "out_of_scope"):
            raise ValueError("refused needs reason not_in_policy, no_authorized_source or out_of_scope")
        if self.status == "escalate" and self.reason != "needs_human":
            raise ValueError("escalate needs reason needs_human")
        return self


class GoldItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    category: Category
    user: str
    question: str = Field(min_length=1)
    turns: tuple[str, ...] = ()
    expected: GoldExpected
    forbidden: tuple[str, ...] = ()
    forms: tuple[Form, ...] = ()
    notes: str = ""


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    items: tuple[GoldItem, ...]
    hash: str

    def by_id(self) -> dict[str, GoldItem]:
        return {item.id: item for item in self.items}


def load_gold_set(path: Path) -> EvalSet:
    """Every line validated; the error names the line and the field."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"eval set {path} not found; set POLICYRAG_GOLD_SET_FILE or pass --set") from None
    items: list[GoldItem] = []
    seen: set[str] = set()
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = GoldItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"eval set {path} line {number} is not JSON ({exc.msg}); fix that line") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
            raise ConfigError(f"eval set {path} line {number} is invalid: {problems}") from None
        if item.id in seen:
            raise ConfigError(f"eval set {path} line {number}: id {item.id!r} is used twice; ids must be unique")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ConfigError(f"eval set {path} holds no items")
    return EvalSet(path.stem, path, tuple(items), hashlib.sha256(raw).hexdigest())
