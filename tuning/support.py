"""The support model: does this sentence answer this question? A cross-encoder (the retrieval
embedder's MiniLM weights with a one-logit head, sentence-transformers' `CrossEncoder`) fine-tuned
on the training pairs at sentence level, and read by the status decider as one more feature: the
best score over the sentences the model is shown.

Why: the decider's other evidence cannot tell a passage that answers the question from one on the
same subject that does not ("How much notice before bereavement leave?" against the bereavement
section, which gives days, not notice). On the v4 gold run the questions that should be refused
but were answered had the same model probabilities and nearly the same embedder cosines as the
answered ones. A cross-encoder reads question and sentence together, and the training pairs hold
exactly the contrast it must learn: the sentences a target cites against the other sentences of
the same context, and whole contexts that do not answer (restricted, unsupported, not in policy).

Examples come from the dataset's train split only, so the decider, fitted on held-out pairs, sees
the support scores it will see on unseen questions. Escalation pairs are left out: whether a case
needs a person is the model's call, not a sentence's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.prompt import PromptPassage, Sentence, number_sentences

SUPPORT_DIR = "support-model"  # inside an adapter's folder, hashed with its other files
SUPPORT_INFO = "support.json"  # in SUPPORT_DIR: what it was trained on
MAX_LENGTH = 128  # question + one sentence with its heading fit with room to spare


@dataclass(frozen=True)
class SupportExample:
    question: str
    sentence: str  # as `sentence_text` renders it
    label: float  # 1.0: a sentence the target cites


def sentence_text(passage: PromptPassage, sentence: Sentence) -> str:
    """A sentence as the support model reads it: after its document title and innermost heading,
    which often carry the subject the sentence leaves implicit ("Bereavement leave: up to five days")."""
    heading = passage.section_path[-1] if passage.section_path else ""
    return f"{passage.title} › {heading}: {sentence.text}" if heading else f"{passage.title}: {sentence.text}"


def cited_refs(pair, sentences: Sequence[Sentence]) -> set[str]:
    """The refs of the sentences that the pair's target quotes (any overlap with a quote)."""
    response = json.loads(pair.response)
    texts = {p.citation_id: p.text for p in pair.context}
    refs: set[str] = set()
    for citation in response.get("citations") or []:
        text = texts.get(citation["id"], "")
        start = text.find(citation["quote"])
        if start < 0:
            continue
        end = start + len(citation["quote"])
        refs |= {s.ref for s in sentences if s.citation_id == citation["id"] and s.start < end and s.end > start}
    return refs


def support_examples(pairs: Sequence, *, negatives: int = 8, seed: int = 0) -> list[SupportExample]:
    """Sentence-level examples from answered and refused pairs: every cited sentence a positive,
    up to `negatives` other sentences of the context (drawn at random) negatives."""
    rng = random.Random(seed)
    out: list[SupportExample] = []
    for pair in pairs:
        if pair.status == "escalate":
            continue
        sentences = number_sentences(pair.context)
        by_id = {p.citation_id: p for p in pair.context}
        positive = cited_refs(pair, sentences) if pair.status == "answered" else set()
        others = [s for s in sentences if s.ref not in positive]
        rng.shuffle(others)
        chosen = [s for s in sentences if s.ref in positive] + others[:negatives]
        out += [SupportExample(pair.instruction, sentence_text(by_id[s.citation_id], s), float(s.ref in positive))
                for s in chosen]
    return out


def train_support_model(base: Path, examples: Sequence[SupportExample], target: Path, *, epochs: float = 1.0,
                        batch_size: int = 32, learning_rate: float = 5e-5, seed: int = 0) -> dict[str, Any]:
    """Fine-tune a cross-encoder from the sentence-transformers model at `base` and save it at
    `target`; returns what was trained on (recorded in the adapter's manifest)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    positives = sum(e.label for e in examples)
    if not positives or positives == len(examples):
        raise ValueError(f"a support model needs both cited and uncited sentences, got {len(examples)} examples "
                         f"of which {int(positives)} cited")
    model = CrossEncoder(str(base), num_labels=1, max_length=MAX_LENGTH, device="cpu")
    data = Dataset.from_dict({"question": [e.question for e in examples], "sentence": [e.sentence for e in examples],
                              "label": [e.label for e in examples]})
    # Positives are rarer than negatives: weigh them up so the score is not pushed down overall.
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(examples) - positives) / positives))
    args = CrossEncoderTrainingArguments(
        output_dir=str(target.parent / f".{target.name}-trainer"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, warmup_steps=0.1,
        save_strategy="no", report_to="none", use_cpu=True, seed=seed, disable_tqdm=True,
        logging_strategy="no")
    CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    model.save_pretrained(str(target))
    return {"examples": len(examples), "positives": int(positives), "epochs": epochs}


def build_support_model(base: Path, pairs: Sequence, target: Path, *, dataset_hash: str, epochs: float,
                        negatives: int) -> dict[str, Any]:
    """Train the support model on the train split of `pairs` into `target`, with a record of what
    it was trained on (SUPPORT_INFO) so that it is reused only with the same dataset."""
    started = time.perf_counter()
    examples = support_examples([p for p in pairs if p.split == "train"], negatives=negatives)
    info = train_support_model(base, examples, target, epochs=epochs)
    info.update(dataset_hash=dataset_hash, negatives=negatives, wall_s=round(time.perf_counter() - started, 1))
    (target / SUPPORT_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def read_support_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SUPPORT_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a support model from `policyrag tune` ({exc})") from None


class SupportModel:
    """A trained support model; `best` is the highest logit over the passages' sentences."""

    def __init__(self, folder: Path) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model = CrossEncoder(str(folder), max_length=MAX_LENGTH, device="cpu")

    def scores(self, question: str, passages: Sequence[PromptPassage]) -> list[float]:
        import torch

        sentences = number_sentences(passages)
        if not sentences:
            return []
        by_id = {p.citation_id: p for p in passages}
        pairs = [(question, sentence_text(by_id[s.citation_id], s)) for s in sentences]
        return [float(x) for x in self.model.predict(pairs, batch_size=64, activation_fn=torch.nn.Identity(),
                                                    show_progress_bar=False)]

    def best(self, question: str, passages: Sequence[PromptPassage]) -> float:
        """The best sentence's logit; -10 (a sure "no") without passages."""
        return max(self.scores(question, passages), default=-10.0)
