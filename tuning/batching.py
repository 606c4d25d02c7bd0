"""Token-level training examples and their batches: what the training loop needs, with no
import beyond torch (so the loop also runs where only torch, transformers and PEFT are
installed, such as a GPU machine fed with pre-encoded examples)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    pair_id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt, the token ids on the response
    kind: str = ""  # the target's status, for balanced sampling
    status_at: int = -1  # index, among the response tokens, of the first token of the status value (-1: unknown)

    @property
    def response_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def batches(
    examples: Sequence[Example], batch_size: int, *, seed: int, bucketing: bool, balanced: bool = False
) -> Iterator[list[Example]]:
    """Endless batches, epoch after epoch. With bucketing, each window of 16 batches is sorted by
    length before it is cut, so a batch holds examples of similar length (little padding), and
    the batches are then shuffled so lengths do not run in order."""
    rng = random.Random(seed)
    counts = Counter(e.kind for e in examples)
    # balanced: a kind n times rarer than the commonest is drawn sqrt(n) times as often, so the
    # few refusal and escalation targets are seen enough in a short run without flooding it
    weight = {k: math.sqrt(max(counts.values()) / c) if balanced else 1.0 for k, c in counts.items()}
    while True:
        order = []
        for e in examples:
            w = weight[e.kind]
            order += [e] * (int(w) + (rng.random() < w - int(w)))
        rng.shuffle(order)
        cut: list[list[Example]] = []
        window = batch_size * 16 if bucketing else batch_size
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            if bucketing:
                chunk = sorted(chunk, key=lambda e: len(e.input_ids))
            cut += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if bucketing:
            rng.shuffle(cut)
        yield from cut


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
