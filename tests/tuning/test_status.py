"""tuning/status.py: the status decider's evidence, fit, persistence and use in a prompt."""

from __future__ import annotations

import json
import math
import random

import pytest

from tuning.status import (
    DECIDER_FILE,
    FEATURES,
    STATUSES,
    StatusDecider,
    SupportScorer,
    fit_decider,
    model_top_logprobs,
    pick_fit_pairs,
    status_logprobs,
    status_prior,
)


def test_status_logprobs_sum_the_tokens_that_begin_each_status():
    top = {"answered": math.log(0.5), "ref": math.log(0.2), "re": math.log(0.1), "esc": math.log(0.05),
           "{": math.log(0.01)}
    lp = dict(zip(STATUSES, status_logprobs(top)))
    assert lp["answered"] == pytest.approx(math.log(0.5))
    assert lp["refused"] == pytest.approx(math.log(0.3))  # "ref" and "re" both begin "refused"
    assert lp["escalate"] == pytest.approx(math.log(0.05))
    # a status with no listed token gets less than the least likely listed token
    lp = dict(zip(STATUSES, status_logprobs({"answered": -0.1, "{": -4.0})))
    assert lp["refused"] == lp["escalate"] == pytest.approx(-5.0)


def _rows(n=300, seed=0):
    """Synthetic evidence: refused when the passages are far from the question, escalate when the
    model strongly says so, else answered; the model's own arg-max is often wrong."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        status = rng.choice(STATUSES)
        lp = [rng.uniform(-4, -1) for _ in STATUSES]
        if rng.random() < 0.4:
            lp[STATUSES.index(status)] = -0.2
        if status == "escalate":
            lp[2] = -0.05
        cos = rng.uniform(0.05, 0.3) if status == "refused" else rng.uniform(0.45, 0.9)
        rows.append((lp + [cos, cos + rng.uniform(-0.05, 0.05)], status))
    return rows


def test_the_fitted_decider_beats_the_models_own_arg_max_and_says_so():
    rows = _rows()
    decider = fit_decider(rows)
    fresh = _rows(seed=1)
    accuracy = sum(decider.decide(x) == y for x, y in fresh) / len(fresh)
    argmax = sum(STATUSES[max(range(3), key=lambda i: x[i])] == y for x, y in fresh) / len(fresh)
    assert accuracy > 0.9 and accuracy > argmax + 0.15, (accuracy, argmax)
    info = decider.fitted_on
    assert info["pairs"] == 300 and sum(info["by_status"].values()) == 300
    assert info["cv_accuracy"] > 0.9 and info["cv_accuracy"] > info["cv_argmax_accuracy"]
    assert all(0.8 < r <= 1.0 for r in info["cv_recall"].values())
    assert sum(decider.scores(fresh[0][0]).values()) == pytest.approx(1.0)


def test_a_status_never_held_out_is_never_decided():
    rows = [(x, y) for x, y in _rows() if y != "escalate"]
    decider = fit_decider(rows)
    assert {decider.decide(x) for x, _ in _rows(seed=2)} == {"answered", "refused"}
    with pytest.raises(ValueError, match="at least two statuses"):
        fit_decider([(x, "answered") for x, _ in rows[:10]])


def test_a_decider_round_trips_through_its_file_and_refuses_other_features(tmp_path):
    decider = fit_decider(_rows())
    decider.save(tmp_path)
    again = StatusDecider.load(tmp_path)
    assert again == decider
    assert StatusDecider.load(tmp_path / "elsewhere") is None
    data = json.loads((tmp_path / DECIDER_FILE).read_text())
    data["features"] = [*FEATURES[:-1], "something_else"]
    with pytest.raises(ValueError, match="refit it"):
        StatusDecider.from_json(data)
    data["features"] = list(FEATURES)
    data["coef"] = data["coef"][:2]
    with pytest.raises(ValueError, match="do not match"):
        StatusDecider.from_json(data)
    with pytest.raises(ValueError, match="4 features given"):
        decider.decide(_rows()[0][0][:4])


def _population(n, seed, shares=(0.7, 0.25, 0.05)):
    """Overlapping evidence drawn with a skewed status mix, as a deployment sees it."""
    rng = random.Random(seed)
    centres = {"answered": (-0.5, -2.0, -3.0, 0.65), "refused": (-1.5, -0.8, -3.0, 0.45),
               "escalate": (-1.5, -2.0, -0.8, 0.55)}
    out = []
    for _ in range(n):
        status = rng.choices(STATUSES, weights=shares)[0]
        *lp, cos = (c + rng.gauss(0, 1.2 if i < 3 else 0.15) for i, c in enumerate(centres[status]))
        out.append((lp + [cos, cos], status))
    return out


def test_the_prior_correction_moves_a_balanced_fit_to_the_deployment_mix():
    """A fit on a status-balanced pick over-predicts the rare statuses on the real mix; corrected
    to the population's shares it is more accurate there, by exactly the log prior ratio."""
    class P:
        def __init__(self, row):
            self.row, self.status = row, row[1]

    population = _population(1500, seed=3)
    balanced = [p.row for p in pick_fit_pairs([P(r) for r in population], 240)]
    prior = status_prior(P(r) for r in population)
    assert prior["answered"] > 0.6 and sum(prior.values()) == pytest.approx(1.0)
    plain, corrected = fit_decider(balanced), fit_decider(balanced, prior=prior)
    fresh = _population(2000, seed=4)
    accuracy = {name: sum(d.decide(x) == y for x, y in fresh) / len(fresh)
                for name, d in (("plain", plain), ("corrected", corrected))}
    assert accuracy["corrected"] > accuracy["plain"] + 0.03, accuracy
    decided = {name: sum(d.decide(x) == "answered" for x, _ in fresh) for name, d in (("plain", plain), ("corrected", corrected))}
    assert decided["corrected"] > decided["plain"]
    share = {s: c / len(balanced) for s, c in corrected.fitted_on["by_status"].items()}
    for status in STATUSES:
        expected = math.log(prior[status]) - math.log(share[status])
        assert corrected.fitted_on["prior_shift"][status] == pytest.approx(expected, abs=1e-4)
    # the same regression underneath: scores are the plain ones reweighted by the prior ratio
    x = fresh[0][0]
    weighted = {s: plain.scores(x)[s] * prior[s] / share[s] for s in STATUSES}
    total = sum(weighted.values())
    for status in STATUSES:
        assert corrected.scores(x)[status] == pytest.approx(weighted[status] / total, rel=1e-6)
    assert "prior" not in plain.fitted_on
    # its cross-validated accuracy, weighted to the prior, says what the fresh mix then shows
    assert corrected.fitted_on["cv_accuracy"] == pytest.approx(accuracy["corrected"], abs=0.06)
    with pytest.raises(ValueError, match="no positive share"):
        fit_decider(balanced, prior={"answered": 0.0})


def test_fit_pairs_spread_over_statuses():
    class P:
        def __init__(self, status):
            self.status = status

    pairs = [P("answered")] * 50 + [P("refused")] * 20 + [P("escalate")] * 3
    chosen = pick_fit_pairs(pairs, 30)
    counts = {s: sum(p.status == s for p in chosen) for s in STATUSES}
    assert counts == {"answered": 14, "refused": 13, "escalate": 3}


def test_support_features_are_high_for_the_passage_that_answers(embedder):
    from tuning.pairs import ContextPassage

    scorer = SupportScorer(embedder, cache_size=4)
    leave = ContextPassage(citation_id="leave@v1#c1", doc_id="leave", title="Leave", section_path=("Carry-over",),
                           text="You may carry over up to 5 days of unused annual leave. Carry-over must be used by March.")
    wifi = ContextPassage(citation_id="it@v1#c1", doc_id="it", title="IT", section_path=("Wi-Fi",),
                          text="The guest Wi-Fi password changes every Monday. Ask reception for it.")
    question = "How many days of annual leave can I carry over?"
    near, far = scorer.features(question, [leave, wifi]), scorer.features(question, [wifi])
    assert near[0] > far[0] + 0.2 and near[1] > far[1] + 0.2
    assert len(scorer._cache) <= 4  # bounded however many texts went through it
    assert scorer.features(question, []) == [0.0, 0.0]


def test_the_models_top_tokens_after_the_status_prefix_are_status_tokens(base_model_dir):
    """On the real base model: the 20 most likely tokens are log-probabilities of distinct
    tokens, and a prompt that spells out the status moves mass onto it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    messages = [{"role": "system", "content": 'Always reply exactly {"status": "refused"}.'},
                {"role": "user", "content": "Write me a poem."}]
    top = model_top_logprobs(model, tokenizer, messages)
    assert len(top) <= 20 and all(v <= 0 for v in top.values())
    assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-4
    lp = dict(zip(STATUSES, status_logprobs(top)))
    assert lp["refused"] > lp["answered"] and lp["refused"] > lp["escalate"], top
