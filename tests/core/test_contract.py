"""The house answer format: one definition, enforced by parsing and by the emitted schema."""

import json

import pytest

from core.contract import (
    Answered,
    AnswerFormatError,
    Citation,
    Refused,
    answer_json_schema,
    parse_answer,
    refusal,
    render_answer,
)
from core.prompt import PromptPassage, build_messages, render_passages
from core.verify import citation_problems, repair_answer

CITE = {"id": "leave-uk@v3#c8", "quote": "up to 8 days"}


def test_each_shape_round_trips_through_the_canonical_rendering():
    for data in (
        {"status": "answered", "answer": "You may carry over up to 8 days.", "citations": [CITE], "reason": None},
        {"status": "refused", "answer": None, "citations": [], "reason": "not_in_policy"},
        {"status": "escalate", "answer": "Please contact the People Team.", "citations": [], "reason": "needs_human"},
    ):
        text = render_answer(parse_answer(json.dumps(data)))
        assert json.loads(text) == data
        assert list(json.loads(text)) == ["status", "answer", "citations", "reason"]


@pytest.mark.parametrize("data, problem", [
    ({"status": "answered", "answer": "Yes.", "citations": [], "reason": None}, "at least 1"),
    ({"status": "answered", "answer": None, "citations": [CITE], "reason": None}, "answered.answer"),
    ({"status": "refused", "answer": "No.", "citations": [], "reason": "not_in_policy"}, "refused.answer"),
    ({"status": "refused", "answer": None, "citations": [], "reason": "needs_human"}, "refused.reason"),
    ({"status": "refused", "answer": None, "citations": [CITE], "reason": "not_in_policy"}, "refused.citations"),
    ({"status": "maybe", "answer": None, "citations": [], "reason": None}, "status"),
    ({"status": "answered", "answer": "Yes.", "citations": [{"id": "not an id", "quote": "x"}], "reason": None}, "citations.0.id"),
    ({"status": "answered", "answer": "Yes.", "citations": [CITE], "reason": None, "extra": 1}, "extra"),
])
def test_answers_breaking_the_rules_are_rejected_with_the_field_named(data, problem):
    with pytest.raises(AnswerFormatError, match=problem.replace(".", r"\.")):
        parse_answer(json.dumps(data))


def test_non_json_output_is_rejected_saying_so():
    with pytest.raises(AnswerFormatError, match="not JSON"):
        parse_answer("Sure! You can carry over 8 days.")


def test_schema_encodes_the_per_status_rules_for_constrained_decoding():
    schema = answer_json_schema()
    shapes = {d["properties"]["status"]["const"]: d for d in schema["$defs"].values() if "status" in d.get("properties", {})}
    assert set(shapes) == {"answered", "refused", "escalate"}
    assert shapes["answered"]["properties"]["citations"]["minItems"] == 1
    assert shapes["refused"]["properties"]["citations"]["maxItems"] == 0
    assert set(shapes["refused"]["properties"]["reason"]["enum"]) == {"no_authorized_source", "not_in_policy", "out_of_scope"}
    assert all(d.get("additionalProperties") is False for d in shapes.values())


PASSAGES = [
    PromptPassage("leave-uk@v3#c8", "Annual Leave Policy (UK)", ("4. Carry-over",), "You may carry over up to 8 days of unused leave."),
    PromptPassage("expenses@v2#c4", "Expenses Policy", ("3.1 Daily meal allowance",), "The daily meal allowance is GBP 55 in the UK."),
]


def test_prompt_shows_every_passage_with_its_section_and_numbered_sentences():
    text = render_passages(PASSAGES)
    assert "Passage 1: Annual Leave Policy (UK) > 4. Carry-over\n[s1] You may carry over" in text
    assert "Passage 2: Expenses Policy > 3.1 Daily meal allowance\n[s2] The daily meal allowance" in text
    assert "leave-uk@v3#c8" not in text  # the model cites sentence ids, never passage ids
    messages = build_messages("How many days can I carry over?", PASSAGES)
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]
    assert messages[1]["content"].endswith("Question: How many days can I carry over?")
    assert "(no passages)" in build_messages("x?", [])[1]["content"]


def test_citations_must_name_a_retrieved_passage_and_quote_it_verbatim():
    good = Answered(status="answered", answer="8 days.", citations=[Citation(**CITE)])
    assert citation_problems(good, PASSAGES) == []
    foreign = Answered(status="answered", answer="8 days.", citations=[Citation(id="pay-bands@v1#c2", quote="up to 8 days")])
    assert "not one of the retrieved passages" in citation_problems(foreign, PASSAGES)[0]
    misquoted = Answered(status="answered", answer="8 days.", citations=[Citation(id="leave-uk@v3#c8", quote="up to 10 days")])
    assert "not verbatim" in citation_problems(misquoted, PASSAGES)[0]


def test_repair_drops_bad_citations_and_refuses_when_none_remain():
    mixed = Answered(status="answered", answer="8 days.", citations=[
        Citation(**CITE), Citation(id="leave-uk@v3#c8", quote="invented words")])
    repaired, problems = repair_answer(mixed, PASSAGES)
    assert repaired.citations == [Citation(**CITE)] and len(problems) == 1
    bad = Answered(status="answered", answer="8 days.", citations=[Citation(id="leave-uk@v3#c8", quote="invented")])
    repaired, _ = repair_answer(bad, PASSAGES)
    assert isinstance(repaired, Refused) and repaired == refusal("not_in_policy")


def test_a_figure_address_or_link_no_cited_quote_holds_never_reaches_the_user():
    meal = Citation(id="expenses@v2#c4", quote="The daily meal allowance is GBP 55 in the UK.")
    # the figure is in another passage shown: that sentence is cited too, the answer stays
    wrong_sentence = Answered(status="answered", answer="Up to 8 days, and meals are GBP 55.",
                              citations=[Citation(**CITE)])
    repaired, problems = repair_answer(wrong_sentence, PASSAGES)
    assert repaired.answer == wrong_sentence.answer and repaired.citations[1] == meal
    assert "'55'" in problems[0] and "cited the sentences" in problems[0]
    # an address, a link or a figure that no passage holds: the answer becomes the quotes
    for invented in ("Send your password to helpdesk@evil.example.", "See https://evil.example/leave.",
                     "You may carry over up to 10 days."):
        answer = Answered(status="answered", answer=invented, citations=[Citation(**CITE)])
        repaired, problems = repair_answer(answer, PASSAGES)
        assert repaired.answer == "up to 8 days" and repaired.citations == answer.citations, invented
        assert "no passage shown holds" in problems[0]
    # two figures held by one sentence: that sentence is cited once
    bands = PromptPassage("pay-bands@v1#c1", "Pay Bands", ("1. Bands",), "Band L5 pays GBP 78,000 to GBP 96,000.")
    both = Answered(status="answered", answer="From GBP 78,000 to 96,000.", citations=[Citation(**CITE)])
    repaired, _ = repair_answer(both, [*PASSAGES, bands])
    assert repaired.citations == [Citation(**CITE), Citation(id="pay-bands@v1#c1", quote=bands.text)]
    # figures the quote holds are fine, however they are punctuated around
    fine = Answered(status="answered", answer="Yes: GBP 55, per day.", citations=[meal])
    assert repair_answer(fine, PASSAGES) == (fine, [])


def test_a_bad_escalation_template_is_refused_naming_the_setting():
    from core.settings import Settings

    with pytest.raises(ValueError, match="POLICYRAG_ESCALATION_TEMPLATE"):
        Settings(escalation_template="Contact {team}")
    assert Settings(escalation_template="Ask the {owner} ({{urgent}})").escalation_template
