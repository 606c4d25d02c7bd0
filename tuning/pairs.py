"""Training pairs from retrieved contexts: each seed becomes several (question, context,
target) pairs whose context is what the real retriever returns for a real principal.

Variants of a seed:
- `original` and `paraphrase` (hand-written) and `rule_paraphrase` (templates below): each
  question is retrieved on its own; the target cites the retrieved passage holding the seed's
  quote, or the variant is dropped (`context_miss`) when retrieval does not bring it;
- `shuffled`: the original context in another order;
- `distractor`: the supporting passage among passages retrieved for other seeds;
- `restricted`: the question asked by a user who may not read the source document, with their
  own context -> refused `no_authorized_source` (the target says nothing about the document);
- `unsupported`: the question asked by the seed's own user, with what retrieval brings after the
  source document's passages (and any passage holding the quote) -> refused
  `no_authorized_source`: passages near the subject that do not answer it must not be used to
  answer. Without it the model learned to answer whatever it was given (refusal recall 24% with
  the section seeds, whose targets are 74% `answered`).

Every search goes through the retriever (the one ACL path) and is narrowed to the training
audience: documents every employee or contractor may read (`tuning_audience_groups`) that apply
in every region (`tuning_audience_regions`, default `global`). Text from restricted or
region-only documents never enters the training data: the adapter is served to everyone in
every region and must not be able to recite a document from memory to someone who may not read it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict

from core.contract import Answered, Citation, Escalated, Refused, refusal, render_answer
from retrieval.acl import Principal, SearchFilters, may_read
from retrieval.retriever import Passage, Retriever
from retrieval.store import ChunkPayload, stored_chunks
from tuning.seeds import Seed

Variant = Literal["original", "paraphrase", "rule_paraphrase", "shuffled", "distractor", "restricted", "unsupported"]

# rule-based paraphrases: wrappers that keep the question's meaning and answer
_RULES = (
    lambda q: f"Quick question: {q[0].lower()}{q[1:]}",
    lambda q: re.sub(r"[?.!]+$", "", q).lower(),
    lambda q: f"I need to check something. {q}",
    lambda q: f"Hi, {q[0].lower()}{q[1:]} Thanks!",
)


class ContextPassage(BaseModel):
    """A passage as the prompt shows it (fits `core.prompt.PromptPassage`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    citation_id: str
    doc_id: str
    title: str
    section_path: tuple[str, ...]
    text: str

    @classmethod
    def of(cls, passage: Passage) -> ContextPassage:
        return cls(
            citation_id=passage.citation_id,
            doc_id=passage.doc_id,
            title=passage.title,
            section_path=passage.section_path,
            text=passage.text,
        )


class TrainingPair(BaseModel):
    """One example in the instruction/context/response shape (a line of the dataset JSONL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    seed_id: str
    variant: Variant
    user: str
    instruction: str
    context: tuple[ContextPassage, ...]
    response: str  # the canonical JSON of the target answer (core.contract.render_answer)
    split: Literal["train", "heldout"] = "train"

    @property
    def status(self) -> str:
        return json.loads(self.response)["status"]

    @property
    def target_kind(self) -> str:
        """'answered', 'refused/not_in_policy', 'escalate/needs_human', ..."""
        data = json.loads(self.response)
        return data["status"] if data["status"] == "answered" else f"{data['status']}/{data['reason']}"


@dataclass(frozen=True)
class Rejection:
    seed_id: str
    variant: str
    rule: str  # context_miss | outside_audience | no_restricted_user | schema | ...
    message: str


@dataclass
class Candidate:
    """A pair before the dataset rules have been applied."""

    seed: Seed
    variant: Variant
    user: str
    question: str
    context: list[ContextPassage]
    target: Answered | Refused | Escalated

    def to_pair(self, number: int) -> TrainingPair:
        return TrainingPair(
            id=f"{self.seed.id}/{self.variant}/{number}",
            seed_id=self.seed.id,
            variant=self.variant,
            user=self.user,
            instruction=self.question,
            context=tuple(self.context),
            response=render_answer(self.target),
        )


class PairBuilder:
    """Usage: `PairBuilder(retriever, k=3, audience=("all-staff", "contractors")).build(seeds)`;
    `regions` (default: `global` only) are the document regions training may read."""

    def __init__(self, retriever: Retriever, *, k: int, audience: Sequence[str],
                 regions: Sequence[str] = ("global",), seed: int = 0) -> None:
        self.retriever = retriever
        self.k = k
        self.narrow = SearchFilters(groups=tuple(audience), regions=tuple(regions))
        self.seed = seed
        self._doc_acl: dict[str, ChunkPayload] | None = None

    def build(self, seeds: Iterable[Seed]) -> tuple[list[Candidate], list[Rejection]]:
        candidates: list[Candidate] = []
        rejections: list[Rejection] = []
        pools: dict[str, list[ContextPassage]] = {}  # user -> passages seen, for distractors
        seeds = list(seeds)
        for seed in seeds:
            made, rejected = self._seed_pairs(seed)
            candidates.extend(made)
            rejections.extend(rejected)
            for c in made:
                pools.setdefault(c.user, []).extend(c.context)
        candidates.extend(self._distractors(candidates, pools))
        return candidates, rejections

    # -- per seed ---------------------------------------------------------------------------

    def _seed_pairs(self, seed: Seed) -> tuple[list[Candidate], list[Rejection]]:
        made: list[Candidate] = []
        rejected: list[Rejection] = []
        rng = random.Random(f"{self.seed}:{seed.id}")
        questions: list[tuple[Variant, str]] = [("original", seed.question)]
        questions += [("paraphrase", p) for p in seed.paraphrases]
        questions.append(("rule_paraphrase", rng.choice(_RULES)(seed.question)))

        in_audience = seed.doc_id is None or self._readable_by_audience(seed.doc_id)
        # a "not in policy" target needs the document's passages in the context, so it is outside too
        if seed.kind in ("answered", "not_in_policy") and not in_audience:
            rejected.append(Rejection(seed.id, "original", "outside_audience",
                f"{seed.doc_id!r} is not readable by the training audience in every training region; "
                "only its restricted variant is built, so its text never enters training"))
        else:
            for variant, question in questions:
                context = self._context(question, seed.user)
                target = self._target(seed, context)
                if isinstance(target, Rejection):
                    rejected.append(Rejection(seed.id, variant, target.rule, target.message))
                    continue
                made.append(Candidate(seed, variant, seed.user, question, context, target))
            originals = [c for c in made if c.variant == "original"]
            if originals and len(originals[0].context) > 1:
                shuffled = list(originals[0].context)
                while shuffled == originals[0].context:
                    rng.shuffle(shuffled)
                made.append(Candidate(seed, "shuffled", seed.user, seed.question, shuffled, originals[0].target))
        if seed.kind == "answered" and in_audience:
            unsupported = self._unsupported(seed)
            if unsupported is not None:
                made.append(unsupported)
        if seed.kind == "answered":
            made_or_rejection = self._restricted(seed, rng)
            if isinstance(made_or_rejection, Rejection):
                rejected.append(made_or_rejection)
            else:
                made.append(made_or_rejection)
        return made, rejected

    def _context(self, question: str, user: str | Principal) -> list[ContextPassage]:
        passages = self.retriever.search(question, user, k=self.k, filters=self.narrow)
        return [ContextPassage.of(p) for p in passages]

    def _target(self, seed: Seed, context: list[ContextPassage]) -> Answered | Refused | Escalated | Rejection:
        if seed.kind == "out_of_scope":
            return refusal("out_of_scope")
        if seed.kind == "no_source":
            return refusal("no_authorized_source")
        if seed.kind == "not_in_policy":
            if not any(p.doc_id == seed.doc_id for p in context):
                return Rejection(seed.id, "", "context_miss",
                    f"no passage of {seed.doc_id!r} retrieved, so 'not_in_policy' would be wrong here")
            return refusal("not_in_policy")
        supporting = [p for p in context if seed.quote and p.doc_id == seed.doc_id and seed.quote in p.text]
        if seed.kind == "escalate":
            citations = [Citation(id=supporting[0].citation_id, quote=seed.quote)] if supporting else []
            return Escalated(status="escalate", answer=seed.answer, citations=citations)
        if not supporting:
            return Rejection(seed.id, "", "context_miss",
                f"the quote is in no retrieved passage of {seed.doc_id!r} for {seed.user!r}")
        return Answered(status="answered", answer=seed.answer,
                        citations=[Citation(id=supporting[0].citation_id, quote=seed.quote)])

    def _unsupported(self, seed: Seed) -> Candidate | None:
        """The seed's question with its source taken out of the context (see the module doc);
        None when nothing else is retrieved (the service refuses without the model then)."""
        wide = self.retriever.search(seed.question, seed.user, k=self.k + 5, filters=self.narrow)
        others = [ContextPassage.of(p) for p in wide
                  if p.doc_id != seed.doc_id and not (seed.quote and seed.quote in p.text)][: self.k]
        if not others:
            return None
        return Candidate(seed, "unsupported", seed.user, seed.question, others, refusal("no_authorized_source"))

    def _restricted(self, seed: Seed, rng: random.Random) -> Candidate | Rejection:
        """The seed asked by someone who may not read its source (same region scope, so the
        refusal is about access and not about a regional variant of the policy)."""
        chunk = self._doc_chunks().get(seed.doc_id or "")
        if chunk is None:
            return Rejection(seed.id, "restricted", "unknown_doc", f"document {seed.doc_id!r} is not indexed")
        outsiders = []
        for user_id in sorted(self.retriever.directory.users):
            who = self.retriever.principal(user_id)
            # in scope: the region would let them read it (asked with the document's own groups)
            in_scope = may_read(replace(who, groups=chunk.groups), chunk.groups, chunk.region)
            if in_scope and not may_read(who, chunk.groups, chunk.region):
                outsiders.append(who)
        if not outsiders:
            return Rejection(seed.id, "restricted", "no_restricted_user",
                f"every user in the directory may read {seed.doc_id!r}")
        who = rng.choice(outsiders)
        context = self._context(seed.question, who)
        leaked = [p.citation_id for p in context if p.doc_id == seed.doc_id]
        if leaked:  # cannot happen while the ACL filter works; refuse to build on it if it does
            raise RuntimeError(f"ACL breach: {who.user_id} retrieved {leaked}")
        return Candidate(seed, "restricted", who.user_id, seed.question, context, refusal("no_authorized_source"))

    def _distractors(self, candidates: list[Candidate], pools: dict[str, list[ContextPassage]]) -> list[Candidate]:
        out = []
        for c in candidates:
            if c.variant != "original" or not isinstance(c.target, Answered):
                continue
            rng = random.Random(f"{self.seed}:{c.seed.id}:distractor")
            support = {cit.id for cit in c.target.citations}
            others = {p.citation_id: p for p in pools.get(c.user, []) if p.doc_id != c.seed.doc_id}
            if len(others) < self.k - 1:
                continue
            chosen = rng.sample(sorted(others), self.k - 1)
            context = [p for p in c.context if p.citation_id in support] + [others[i] for i in chosen]
            rng.shuffle(context)
            out.append(Candidate(c.seed, "distractor", c.user, c.question, context, c.target))
        return out

    def _readable_by_audience(self, doc_id: str) -> bool:
        """The training audience (settings.tuning_audience_groups) may read it, and it applies in
        a training region (settings.tuning_audience_regions)."""
        chunk = self._doc_chunks().get(doc_id)
        audience = Principal("tuning-audience", tuple(self.narrow.groups or ()), "global")
        return (chunk is not None and bool(audience.groups) and chunk.region in (self.narrow.regions or ())
                and may_read(audience, chunk.groups, chunk.region))

    def _doc_chunks(self) -> dict[str, ChunkPayload]:
        """doc_id -> one chunk of its indexed (current) version, for its access metadata."""
        if self._doc_acl is None:
            self._doc_acl = {}
            for chunk in stored_chunks(self.retriever.store):
                self._doc_acl.setdefault(chunk.doc_id, chunk)
        return self._doc_acl


def split_of(seed_id: str, heldout_fraction: float) -> Literal["train", "heldout"]:
    """Held-out by seed, so no variant of a held-out seed is trained on."""
    bucket = int(hashlib.sha256(seed_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if bucket < heldout_fraction else "train"
