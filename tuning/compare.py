"""Base model vs adapter on held-out pairs, with the same prompt and no constrained decoding:
schema validity (the output parses as a wire-format answer whose sentence ids are in the prompt) and
refusal accuracy (refused exactly when the target refuses)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from core.contract import AnswerFormatError
from core.prompt import number_sentences
from core.references import parse_wire_answer, resolve_wire_answer
from core.verify import citation_problems
from tuning.examples import prompt_text
from tuning.pairs import TrainingPair


@dataclass
class GenerationScores:
    items: int = 0
    schema_valid: float = 0.0  # parses and validates against the house schema
    citations_valid: float = 0.0  # ... and every citation verifies against its context
    status_accuracy: float = 0.0  # answered / refused / escalate as the target
    refusal_accuracy: float = 0.0  # refused iff the target is refused (invalid output = wrong)
    outputs: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "outputs"}


@torch.no_grad()
def generate_answers(model, tokenizer, pairs: Sequence[TrainingPair], *, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy, batched (left padding), stopping at the end-of-turn token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    texts: list[str] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prompts = [prompt_text(tokenizer, p.instruction, p.context) for p in chunk]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>") or tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


def score_outputs(pairs: Sequence[TrainingPair], outputs: Sequence[str]) -> GenerationScores:
    scores = GenerationScores(items=len(pairs))
    valid = cited = status_ok = refusal_ok = 0
    for pair, text in zip(pairs, outputs):
        expected = json.loads(pair.response)
        try:
            wire = parse_wire_answer(text)
        except AnswerFormatError as exc:
            got, problem = None, str(exc)
        else:
            got, problem = wire.status, None
            valid += 1
            answer, unknown = resolve_wire_answer(wire, number_sentences(pair.context), pair.context)
            problems = unknown + citation_problems(answer, pair.context)
            cited += not problems
            problem = "; ".join(problems) or None
        status_ok += got == expected["status"]
        refusal_ok += (got == "refused") == (expected["status"] == "refused") and got is not None
        scores.outputs.append({"id": pair.id, "expected": expected["status"], "got": got, "problem": problem, "text": text[:400]})
    n = max(1, len(pairs))
    scores.schema_valid, scores.citations_valid = valid / n, cited / n
    scores.status_accuracy, scores.refusal_accuracy = status_ok / n, refusal_ok / n
    return scores


def pick_compare_items(pairs: Sequence[TrainingPair], n: int) -> list[TrainingPair]:
    """Up to n held-out pairs, round-robin over target kinds (status/reason), and within a kind
    one variant per seed before a second one of any seed, so a few seeds do not fill the set."""
    by_kind: dict[str, list[TrainingPair]] = {}
    seen: Counter[tuple[str, str]] = Counter()  # (kind, seed) -> variants so far
    nth: dict[str, int] = {}
    for pair in sorted(pairs, key=lambda p: p.id):
        kind = pair.target_kind
        nth[pair.id] = seen[kind, pair.seed_id]
        seen[kind, pair.seed_id] += 1
        by_kind.setdefault(kind, []).append(pair)
    for kind in by_kind:
        by_kind[kind].sort(key=lambda p: (nth[p.id], p.id))
    picked: list[TrainingPair] = []
    while len(picked) < n and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(picked) < n:
                picked.append(by_kind[kind].pop(0))
    return picked
