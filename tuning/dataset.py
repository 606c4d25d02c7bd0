"""The dataset rules, each enforced here and counted in the report, and the versioned JSONL.

Rules, in order: normalized formatting, PII removal (the ingest scrubber), schema validation of
every target and its citations, grounding (every figure in an answer is in a cited quote),
ambiguity (the quote is in passages of two documents), contradiction (the same question and
context with different targets, or near-identical questions of one user with different
statuses), semantic dedupe (embedding similarity). The dataset version is the sha256 of the
JSONL it writes.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.contract import Answered, AnswerFormatError, validate_answer
from core.errors import ConfigError
from core.verify import citation_problems
from tuning.pairs import Candidate, Rejection, TrainingPair, split_of

_FIGURE = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class DatasetReport:
    seeds: int = 0
    candidates: int = 0
    pairs: int = 0
    train: int = 0
    heldout: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # rule -> count
    pii_replacements: int = 0
    by_variant: dict[str, int] = field(default_factory=dict)
    by_target: dict[str, int] = field(default_factory=dict)  # status/reason -> count
    dataset_hash: str = ""
    rejections: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def apply_rules(
    candidates: list[Candidate],
    *,
    scrubber,
    embed,
    dedupe_threshold: float,
    heldout_fraction: float,
) -> tuple[list[TrainingPair], list[Rejection], int]:
    """The pairs that pass every rule (sorted, split), the rejections, PII replacements made."""
    kept: list[Candidate] = []
    rejected: list[Rejection] = []
    pii = 0

    def reject(c: Candidate, rule: str, message: str) -> None:
        rejected.append(Rejection(c.seed.id, c.variant, rule, message))

    for c in candidates:
        # normalized formatting + PII removal on what people wrote (contexts were scrubbed at ingest)
        question, report = scrubber.scrub(normalize_text(c.question))
        pii += report.total
        c.question = question
        if getattr(c.target, "answer", None):
            answer, report = scrubber.scrub(normalize_text(c.target.answer))
            pii += report.total
            c.target = c.target.model_copy(update={"answer": answer})
        try:
            validate_answer(c.target.model_dump(mode="json"))
        except AnswerFormatError as exc:
            reject(c, "schema", str(exc))
            continue
        problems = citation_problems(c.target, c.context)
        if problems:
            reject(c, "citation", "; ".join(problems))
            continue
        if isinstance(c.target, Answered):
            quoted = " ".join(cit.quote for cit in c.target.citations)
            missing = sorted(set(_FIGURE.findall(c.target.answer)) - set(_FIGURE.findall(quoted)))
            if missing:
                reject(c, "ungrounded", f"figures {missing} of the answer are in no cited quote")
                continue
            sources = {p.doc_id for p in c.context for cit in c.target.citations if cit.quote in p.text}
            if len(sources) > 1:
                reject(c, "ambiguous", f"the quote is in passages of {sorted(sources)}")
                continue
        kept.append(c)

    vectors = _question_vectors(kept, embed)  # one embedding pass serves both rules below
    kept, contradictions = _drop_contradictions(kept, vectors, dedupe_threshold)
    rejected += contradictions
    kept, duplicates = _dedupe(kept, vectors, dedupe_threshold)
    rejected += duplicates

    numbers: Counter[str] = Counter()
    pairs = []
    for c in sorted(kept, key=lambda c: (c.seed.id, c.variant, c.question)):
        key = f"{c.seed.id}/{c.variant}"
        numbers[key] += 1
        pair = c.to_pair(numbers[key])
        pairs.append(pair.model_copy(update={"split": split_of(c.seed.id, heldout_fraction)}))
    return pairs, rejected, pii


def _comparable(question: str) -> str:
    """Case and punctuation do not make a question different."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", question.lower())).strip()


def _question_vectors(candidates: list[Candidate], embed) -> dict[str, np.ndarray]:
    """Unit vector of each distinct comparable question."""
    texts = sorted({_comparable(c.question) for c in candidates})
    return dict(zip(texts, np.asarray(embed(texts), dtype=np.float32))) if texts else {}


def _matrix(candidates: list[Candidate], vectors: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([vectors[_comparable(c.question)] for c in candidates]) if candidates else np.zeros((0, 1))


def _drop_contradictions(candidates: list[Candidate], vectors: dict[str, np.ndarray], threshold: float):
    keys = [(_comparable(c.question), tuple(sorted(p.citation_id for p in c.context))) for c in candidates]
    responses: dict[tuple, set[str]] = defaultdict(set)
    for key, c in zip(keys, candidates):
        responses[key].add(_response(c))
    bad = {i for i, key in enumerate(keys) if len(responses[key]) > 1}
    matrix = _matrix(candidates, vectors)
    for i, j in np.argwhere(np.triu(matrix @ matrix.T, 1) >= threshold):
        a, b = candidates[i], candidates[j]
        if a.user == b.user and a.seed.id != b.seed.id and a.target.status != b.target.status:
            bad.update((int(i), int(j)))
    rejections = [
        Rejection(candidates[i].seed.id, candidates[i].variant, "contradictory",
                  "the same question has another target elsewhere in the data")
        for i in sorted(bad)
    ]
    return [c for i, c in enumerate(candidates) if i not in bad], rejections


def _dedupe(candidates: list[Candidate], vectors: dict[str, np.ndarray], threshold: float):
    matrix = _matrix(candidates, vectors)
    kept_idx: list[int] = []
    rejections = []
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        key = (c.user, tuple(p.citation_id for p in c.context), _response(c))
        if any(float(matrix[i] @ matrix[j]) >= threshold for j in by_key[key]):
            rejections.append(Rejection(c.seed.id, c.variant, "duplicate",
                                        f"near-duplicate question (cosine >= {threshold}) with the same context and target"))
            continue
        by_key[key].append(i)
        kept_idx.append(i)
    return [candidates[i] for i in kept_idx], rejections


def _response(c: Candidate) -> str:
    return json.dumps(c.target.model_dump(mode="json"), sort_keys=True)


def write_dataset(pairs: list[TrainingPair], report: DatasetReport, root: Path) -> Path:
    """Write pairs.jsonl + report.json under root/<hash12>/; returns that folder."""
    body = "".join(pair.model_dump_json() + "\n" for pair in pairs).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    report.dataset_hash = digest
    folder = root / digest[:12]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.jsonl").write_bytes(body)
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    (root / "LATEST").write_text(digest[:12] + "\n", encoding="utf-8")
    return folder


def load_dataset(folder: Path) -> tuple[list[TrainingPair], str]:
    """The pairs of a dataset folder and its hash; refuses a folder whose JSONL was edited."""
    path = folder / "pairs.jsonl"
    if not path.exists():
        raise ConfigError(f"no dataset at {folder}; run `policyrag tune build-data` first")
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    report_path = folder / "report.json"
    recorded = json.loads(report_path.read_text())["dataset_hash"] if report_path.exists() else None
    if recorded != digest:
        raise ConfigError(
            f"dataset {folder} does not match its recorded hash ({recorded} != {digest}); "
            "rebuild it with `policyrag tune build-data`"
        )
    pairs = [TrainingPair.model_validate_json(line) for line in body.decode("utf-8").splitlines() if line]
    return pairs, digest


def latest_dataset(root: Path) -> Path:
    pointer = root / "LATEST"
    if not pointer.exists():
        raise ConfigError(f"no dataset under {root}; run `policyrag tune build-data` first")
    return root / pointer.read_text().strip()
