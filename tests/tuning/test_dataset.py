"""Each dataset rule is enforced and counted; the dataset version is the hash of its JSONL."""

import json

import pytest

from core.contract import Answered, Citation, refusal
from core.errors import ConfigError
from tuning.dataset import DatasetReport, apply_rules, load_dataset, write_dataset
from tuning.pairs import Candidate, ContextPassage
from tuning.seeds import Seed

MEAL = ContextPassage(citation_id="expenses@v2#c4", doc_id="expenses", title="Expenses Policy", section_path=("3.1",),
                      text="The daily meal allowance is GBP 55 in the UK, USD 70 in the US and EUR 60 in Germany.")
TRAVEL = ContextPassage(citation_id="travel@v3#c2", doc_id="travel", title="Travel Policy", section_path=("2",),
                        text="Book rail travel in standard class. The daily meal allowance is GBP 55 in the UK.")
SEED = Seed(id="meal", kind="answered", user="alice", question="What is the meal allowance?",
            answer="It is GBP 55 a day.", doc_id="expenses", quote="GBP 55 in the UK")


def answered(answer="It is GBP 55 a day.", quote="GBP 55 in the UK, USD 70", cid="expenses@v2#c4"):
    return Answered(status="answered", answer=answer, citations=[Citation(id=cid, quote=quote)])


def cand(question="What is the meal allowance?", context=(MEAL,), target=None, seed=SEED, variant="original", user="alice"):
    return Candidate(seed, variant, user, question, list(context), target or answered())


@pytest.fixture
def rules(scrubber, embedder):
    def run(candidates):
        return apply_rules(candidates, scrubber=scrubber, embed=embedder.embed, dedupe_threshold=0.97, heldout_fraction=0.0)
    return run


def test_a_clean_pair_passes_every_rule(rules):
    pairs, rejected, pii = rules([cand()])
    assert len(pairs) == 1 and not rejected and pii == 0
    assert json.loads(pairs[0].response)["citations"][0]["id"] == "expenses@v2#c4"


def test_personal_data_in_questions_and_answers_is_scrubbed(rules):
    pairs, _, pii = rules([cand(question="I'm Priya Raman, priya.raman@gmail.com - what is the meal allowance?")])
    assert pii >= 2
    assert "priya.raman@gmail.com" not in pairs[0].instruction and "Priya Raman" not in pairs[0].instruction


def test_formatting_is_normalized(rules):
    pairs, _, _ = rules([cand(question="  What is   the meal\nallowance? ")])
    assert pairs[0].instruction == "What is the meal allowance?"


@pytest.mark.parametrize("candidate, rule", [
    (cand(target=answered(quote="GBP 65 in the UK")), "citation"),  # not verbatim
    (cand(target=answered(cid="travel@v3#c9")), "citation"),  # not a retrieved passage
    (cand(target=answered(answer="It is GBP 60 a day.")), "ungrounded"),  # figure not in the quote
    (cand(context=(MEAL, TRAVEL), target=answered(quote="The daily meal allowance is GBP 55 in the UK")), "ambiguous"),
])
def test_bad_targets_are_rejected_by_the_named_rule(rules, candidate, rule):
    pairs, rejected, _ = rules([candidate])
    assert not pairs and [r.rule for r in rejected] == [rule]


def test_contradictory_targets_for_the_same_question_and_context_are_both_rejected(rules):
    pairs, rejected, _ = rules([cand(), cand(target=refusal("not_in_policy"), variant="paraphrase")])
    assert not pairs and [r.rule for r in rejected] == ["contradictory", "contradictory"]


def test_near_identical_questions_with_the_same_context_and_target_are_deduplicated(rules):
    pairs, rejected, _ = rules([cand(), cand(question="what is the meal allowance", variant="rule_paraphrase"),
                                cand(question="How much can I spend on food each day?", variant="paraphrase")])
    assert len(pairs) == 2 and [r.rule for r in rejected] == ["duplicate"]


def test_dataset_hash_is_stable_and_a_tampered_file_is_refused(rules, tmp_path):
    pairs, _, _ = rules([cand(), cand(question="How much can I spend on food each day?", variant="paraphrase")])
    first = write_dataset(pairs, DatasetReport(), tmp_path / "a")
    second = write_dataset(pairs, DatasetReport(), tmp_path / "b")
    assert first.name == second.name
    loaded, digest = load_dataset(first)
    assert loaded == pairs and digest.startswith(first.name)
    (first / "pairs.jsonl").write_text((first / "pairs.jsonl").read_text().replace("GBP 55", "GBP 99"))
    with pytest.raises(ConfigError, match="does not match its recorded hash"):
        load_dataset(first)
