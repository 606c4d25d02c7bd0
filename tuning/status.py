"""The status decider: which of answered / refused / escalate an answer takes, chosen before the
answer is generated, from two kinds of evidence:

- the tuned model's own probabilities for the three statuses, read at the position where its
  answer writes the status (`{"status": "` then the value), from its 20 most likely tokens;
- how close the passages are to the question: the best cosine between the question and any one
  sentence, and between the question and any one passage (the retrieval embedder's vectors).

A multinomial logistic regression (scikit-learn) over those five numbers is fitted on the
dataset's held-out pairs (held out by seed, never the eval sets) right after training, and saved
in the adapter's folder (`status-decider.json`, hashed with its other files). The fit sample is
spread evenly over the statuses (so the rare escalations are all in it), which teaches the
regression a prior of about 1 in 3 for each; its intercepts are then moved to the dataset's own
status shares, the standard prior-shift correction for a logistic model (Saerens, Latinne and
Decaestecker, 2002: add log(new prior / sample prior) to each class's log-odds). Uncorrected, the
balanced sample over-refused (README, session 10). The generation is then constrained to the
decided status (`core.references.wire_json_schema(status=...)`).

Why: the model's arg-max status is biased by what training over-sampled (it escalated 1 in 2
answerable questions it should have answered), and a small model's reading of "do these passages
answer the question?" is improved by the embedder's view of it (measured in the README).
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.prompt import PromptPassage, number_sentences

STATUSES = ("answered", "refused", "escalate")
STATUS_PREFIX = '{"status": "'  # how every wire answer begins (core.references.render_wire)
TOP_LOGPROBS = 20  # vLLM's default ceiling for top_logprobs
DECIDER_FILE = "status-decider.json"
FEATURES = ("lp_answered", "lp_refused", "lp_escalate", "max_sentence_cosine", "max_passage_cosine")


def top_by_text(tokens: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(token text, log-probability) pairs as a mapping; two token ids that decode to the same
    text keep the likelier one."""
    top: dict[str, float] = {}
    for text, logprob in tokens:
        top[text] = max(top.get(text, -math.inf), logprob)
    return top


def status_logprobs(top: Mapping[str, float]) -> list[float]:
    """Per status, the log-probability that the next token starts it: the log-sum of the top
    tokens that are a non-empty prefix of the status ("ref" for "refused"). A status with no such
    token gets one below the least likely token listed (an upper bound on its real value)."""
    floor = (min(top.values()) if top else 0.0) - 1.0
    out = []
    for status in STATUSES:
        values = [lp for token, lp in top.items() if token and status.startswith(token)]
        out.append(_logsumexp(values) if values else floor)
    return out


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class SupportScorer:
    """How close the passages come to the question, by the retrieval embedder. Sentence and
    passage vectors are cached by text (the corpus repeats them across questions), bounded."""

    def __init__(self, embedder, *, cache_size: int = 20_000) -> None:
        self.embedder = embedder
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _vectors(self, texts: Sequence[str]):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for text, vector in zip(missing, self.embedder.embed(missing)):
            self._cache[text] = np.asarray(vector, dtype=np.float32)
        for text in texts:
            self._cache.move_to_end(text)
        out = np.stack([self._cache[t] for t in texts])
        while len(self._cache) > self.cache_size:  # evicted after use: one call may exceed the bound
            self._cache.popitem(last=False)
        return out

    def features(self, question: str, passages: Sequence[PromptPassage]) -> list[float]:
        """[best question-sentence cosine, best question-passage cosine]; 0 without passages."""
        sentences = [s.text for s in number_sentences(passages)]
        if not sentences:
            return [0.0, 0.0]
        (q,) = self._vectors([question])
        best_sentence = float((self._vectors(sentences) @ q).max())
        best_passage = float((self._vectors([p.text for p in passages]) @ q).max())
        return [best_sentence, best_passage]


@dataclass(frozen=True)
class StatusDecider:
    """A fitted multinomial logistic regression over FEATURES; `decide` is its arg-max."""

    coef: tuple[tuple[float, ...], ...]  # one row per status in STATUSES
    intercept: tuple[float, ...]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def scores(self, features: Sequence[float]) -> dict[str, float]:
        """The probability of each status."""
        if len(features) != len(FEATURES):  # zip would silently drop the missing ones
            raise ValueError(f"{len(features)} features given to a decider over {len(FEATURES)} ({list(FEATURES)})")
        logits = [b + sum(w * x for w, x in zip(row, features)) for row, b in zip(self.coef, self.intercept)]
        norm = _logsumexp(logits)
        return {s: math.exp(v - norm) for s, v in zip(STATUSES, logits)}

    def decide(self, features: Sequence[float]) -> str:
        scores = self.scores(features)
        return max(STATUSES, key=scores.__getitem__)

    def to_json(self) -> dict[str, Any]:
        return {"statuses": list(STATUSES), "features": list(FEATURES), "coef": [list(r) for r in self.coef],
                "intercept": list(self.intercept), "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusDecider:
        if tuple(data.get("statuses", ())) != STATUSES or tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"a status decider for statuses {data.get('statuses')} and features "
                             f"{data.get('features')}, not {list(STATUSES)} / {list(FEATURES)}; refit it "
                             "(policyrag tune calibrate)")
        coef = tuple(tuple(float(w) for w in row) for row in data["coef"])
        if len(coef) != len(STATUSES) or any(len(row) != len(FEATURES) for row in coef):
            raise ValueError("a status decider whose coefficients do not match its features; refit it")
        return cls(coef, tuple(float(b) for b in data["intercept"]), dict(data.get("fitted_on", {})))

    @classmethod
    def load(cls, folder: Path) -> StatusDecider | None:
        """The decider saved with an adapter, or None when it has none (adapters trained before)."""
        path = folder / DECIDER_FILE
        if not path.exists():
            return None
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def save(self, folder: Path) -> Path:
        path = folder / DECIDER_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path


def status_prior(pairs: Iterable) -> dict[str, float]:
    """The share of each status among `pairs` (a dataset's: what the adapter was trained toward)."""
    counts = {s: 0 for s in STATUSES}
    for pair in pairs:
        counts[pair.status] += 1
    total = sum(counts.values())
    if not total:
        raise ValueError("no pairs to take a status prior from")
    return {s: c / total for s, c in counts.items()}


def fit_decider(rows: Sequence[tuple[Sequence[float], str]], *, seed: int = 0,
                prior: Mapping[str, float] | None = None) -> StatusDecider:
    """Fit on (features, expected status) rows; `fitted_on` records the counts and the 5-fold
    cross-validated accuracy and per-status recall (what to expect on unseen questions). With a
    `prior` (status -> share), each status's intercept moves by log(prior share / its share of
    the rows), so the decider expects the statuses as often as the prior says (module docstring);
    the cross-validated figures are of the corrected decider, and its accuracies are weighted to
    the prior's mix (each row by prior share / row share): what to expect where it is deployed."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.array([list(f) for f, _ in rows], dtype=np.float64)
    y = np.array([STATUSES.index(s) for _, s in rows])
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise ValueError(f"a status decider needs held-out pairs of at least two statuses, got {len(rows)} "
                         f"pairs of {[STATUSES[i] for i in present]}")
    model = LogisticRegression(C=1.0, max_iter=2000)
    counts = {s: int((y == i).sum()) for i, s in enumerate(STATUSES)}
    fitted_on: dict[str, Any] = {"pairs": len(rows), "by_status": counts}
    shift = _prior_shift(counts, prior)
    if prior is not None:
        fitted_on["prior"] = {s: round(float(prior.get(s, 0.0)), 4) for s in STATUSES}
        fitted_on["prior_shift"] = {s: round(float(v), 4) for s, v in zip(STATUSES, shift)}
    folds = min([5, *[c for c in counts.values() if c]])
    if folds >= 2:
        log_proba = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                      method="predict_log_proba")
        predicted = np.array(present)[(log_proba + shift[present]).argmax(1)]
        weight = np.exp(shift)[y]  # prior share / row share, per row (1 without a prior)
        fitted_on["cv_accuracy"] = round(float(np.average(predicted == y, weights=weight)), 4)
        fitted_on["cv_recall"] = {s: round(float((predicted[y == i] == i).mean()), 4)
                                  for i, s in enumerate(STATUSES) if counts[s]}
        fitted_on["cv_argmax_accuracy"] = round(float(np.average(x[:, :3].argmax(1) == y, weights=weight)), 4)
    model.fit(x, y)
    coef = np.zeros((len(STATUSES), len(FEATURES)))
    intercept = np.full(len(STATUSES), -30.0)  # a status never seen held out is never chosen
    if len(present) == 2:  # sklearn fits one row for two classes: class 1 against class 0
        coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
        intercept[present[0]] = 0.0
    else:
        for row, cls in enumerate(model.classes_):
            coef[cls], intercept[cls] = model.coef_[row], model.intercept_[row]
    return StatusDecider(tuple(tuple(r) for r in coef.tolist()), tuple((intercept + shift).tolist()), fitted_on)


def _prior_shift(counts: Mapping[str, int], prior: Mapping[str, float] | None):
    """Per status, log(prior share) - log(share of the fit rows); 0 without a prior, and for a
    status absent from the rows (never decided anyway) or from the prior (a decider that could
    never choose a status it was fitted on would be a silent change of its statuses)."""
    import numpy as np

    shift = np.zeros(len(STATUSES))
    if prior is None:
        return shift
    total_rows, total_prior = sum(counts.values()), sum(max(0.0, float(prior.get(s, 0.0))) for s in STATUSES)
    if total_prior <= 0:
        raise ValueError(f"a status prior with no positive share: {dict(prior)}")
    for i, status in enumerate(STATUSES):
        share = float(prior.get(status, 0.0)) / total_prior
        if counts[status] and share > 0:
            shift[i] = math.log(share) - math.log(counts[status] / total_rows)
    return shift


def pick_fit_pairs(pairs: Sequence, limit: int, *, seed: int = 0) -> list:
    """Up to `limit` pairs, every status represented as evenly as the pairs allow."""
    rng = random.Random(seed)
    by_status: dict[str, list] = {s: [p for p in pairs if p.status == s] for s in STATUSES}
    for group in by_status.values():
        rng.shuffle(group)
    chosen: list = []
    while len(chosen) < limit and any(by_status.values()):
        for status in STATUSES:
            if by_status[status] and len(chosen) < limit:
                chosen.append(by_status[status].pop())
    return chosen


def model_top_logprobs(model, tokenizer, messages: Sequence[Mapping[str, str]], k: int = TOP_LOGPROBS) -> dict[str, float]:
    """The `k` most likely next tokens (text -> log-probability) after the chat prompt and
    STATUS_PREFIX, from a transformers model (the trainer's, or the local backend's)."""
    import torch

    prompt = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True) + STATUS_PREFIX
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    values, indices = torch.log_softmax(logits, -1).topk(k)
    return top_by_text((tokenizer.decode([i]), v) for v, i in zip(values.tolist(), indices.tolist()))


def fit_for_model(model, tokenizer, pairs: Sequence, scorer: SupportScorer, *, limit: int,
                  prior: Mapping[str, float] | None = None, on_progress=lambda done, total: None) -> StatusDecider:
    """Features of up to `limit` held-out pairs under `model`, then `fit_decider` (with `prior`)."""
    from core.prompt import build_messages

    chosen = pick_fit_pairs(pairs, limit)
    rows = []
    model.eval()
    for n, pair in enumerate(chosen, 1):
        lp = status_logprobs(model_top_logprobs(model, tokenizer, build_messages(pair.instruction, pair.context)))
        rows.append((lp + scorer.features(pair.instruction, pair.context), pair.status))
        on_progress(n, len(chosen))
    return fit_decider(rows, prior=prior)
