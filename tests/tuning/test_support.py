"""The support model's examples (which sentences a target cites) and what training it learns."""

import json

import pytest

from core.contract import refusal, render_answer
from tuning.pairs import ContextPassage, TrainingPair
from tuning.support import support_examples

LEAVE = ContextPassage(
    citation_id="leave@v1#c2", doc_id="leave", title="Leave Policy", section_path=("4. Leave", "4.2 Carry-over"),
    text="Up to five unused days may be carried over into the next year. Carried-over days expire on 31 March. "
         "Requests go through the HR system.")
MEAL = ContextPassage(citation_id="expenses@v2#c4", doc_id="expenses", title="Expenses Policy",
                      section_path=("3.1 Meals",), text="The daily meal allowance is GBP 55 in the UK.")


def answered(question, quote, cid="leave@v1#c2", n=0, split="train"):
    response = json.dumps({"status": "answered", "answer": "x", "citations": [{"id": cid, "quote": quote}], "reason": None})
    return TrainingPair(id=f"p{n}/original/1", seed_id=f"p{n}", variant="original", user="alice", instruction=question,
                        context=(LEAVE, MEAL), response=response, split=split)


def test_cited_sentences_are_the_positives_and_the_rest_of_the_context_the_negatives():
    pair = answered("When do carried-over days expire?", "expire on 31 March")
    examples = support_examples([pair])
    labels = {e.sentence: e.label for e in examples}
    assert labels == {
        "Leave Policy › 4.2 Carry-over: Carried-over days expire on 31 March.": 1.0,
        "Leave Policy › 4.2 Carry-over: Up to five unused days may be carried over into the next year.": 0.0,
        "Leave Policy › 4.2 Carry-over: Requests go through the HR system.": 0.0,
        "Expenses Policy › 3.1 Meals: The daily meal allowance is GBP 55 in the UK.": 0.0,
    }
    assert {e.question for e in examples} == {pair.instruction}
    # a quote across two sentences makes both positive; negatives are capped per pair
    two = answered("What can I carry over and until when?", "next year. Carried-over days expire")
    assert sum(e.label for e in support_examples([two])) == 2
    assert len(support_examples([pair], negatives=1)) == 2


def test_refusals_give_only_negatives_and_escalations_nothing():
    refused = TrainingPair(id="r/restricted/1", seed_id="r", variant="restricted", user="alice",
                           instruction="What is the London allowance?", context=(LEAVE, MEAL),
                           response=render_answer(refusal("not_in_policy")))
    escalate = TrainingPair(id="e/original/1", seed_id="e", variant="original", user="alice",
                            instruction="My manager refuses my carry-over; what now?", context=(LEAVE,),
                            response=json.dumps({"status": "escalate", "answer": "HR will help.", "citations": [],
                                                 "reason": "needs_human"}))
    examples = support_examples([refused, escalate])
    assert len(examples) == 4 and not any(e.label for e in examples)
    assert {e.question for e in examples} == {refused.instruction}


@pytest.mark.slow
def test_the_trained_model_ranks_the_answering_sentence_first(tmp_path):
    """A few passes over a handful of questions: the cited sentence must come out on top of the
    others of the same passage, for the training questions and for a rewording of one."""
    from core.provision import embedding_model_path
    from core.settings import Settings
    from tuning.support import SupportModel, train_support_model

    questions = [("When do carried-over days expire?", "expire on 31 March"),
                 ("How many unused days can I carry over?", "Up to five unused days"),
                 ("Where do I send a carry-over request?", "Requests go through the HR system"),
                 ("What is the deadline for using carried-over leave?", "expire on 31 March")]
    pairs = [answered(q, quote, n=n) for n, (q, quote) in enumerate(questions)]
    base = embedding_model_path(Settings())
    info = train_support_model(base, support_examples(pairs) * 4, tmp_path / "support", epochs=6,
                               batch_size=8, learning_rate=1e-4)
    assert info["positives"] == 16
    model = SupportModel(tmp_path / "support")
    for question, quote in [*questions, ("By which date do leftover days lapse?", "expire on 31 March")]:
        scores = model.scores(question, [LEAVE, MEAL])
        assert quote.split()[0] in LEAVE.text and scores.index(max(scores)) == _sentence_of(quote), (question, scores)


def _sentence_of(quote: str) -> int:
    from core.prompt import number_sentences

    return next(n for n, s in enumerate(number_sentences([LEAVE, MEAL])) if quote in s.text)
