"""Citations by reference: sentence numbering, the per-request schema, and wire <-> house."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core.references as references
from core.contract import MAX_QUOTE_CHARS, Answered, Citation, Escalated, Refused
from core.prompt import PromptPassage, number_sentences, render_passages, sentence_spans
from core.references import (
    ESCALATION_PLACEHOLDER,
    ReferenceError,
    WireAnswered,
    WireRefused,
    parse_wire_answer,
    prompt_fingerprint,
    render_wire,
    resolve_wire_answer,
    wire_from_house,
    wire_json_schema,
)

LEAVE = PromptPassage(
    "leave-uk@v3#c8", "Annual Leave Policy (UK)", ("4. Carry-over",),
    "You may carry over up to 8 days of unused leave. Carried-over days must be taken by 31 March "
    "(see s. 4).\n- Part-time staff: the limit is pro rata.\nRequests go to your manager.",
)
MEALS = PromptPassage("expenses@v2#c4", "Expenses Policy", ("3.1 Meals",), "The daily meal allowance is GBP 55 in the UK.")
PASSAGES = [LEAVE, MEALS]


def test_sentences_are_split_at_sentence_ends_and_lines_and_numbered_across_passages():
    sentences = number_sentences(PASSAGES)
    assert [s.text for s in sentences] == [
        "You may carry over up to 8 days of unused leave.",
        "Carried-over days must be taken by 31 March (see s. 4).",  # "4)." is too short to stand alone
        "- Part-time staff: the limit is pro rata.",
        "Requests go to your manager.",
        "The daily meal allowance is GBP 55 in the UK.",
    ]
    assert [s.ref for s in sentences] == ["s1", "s2", "s3", "s4", "s5"]
    assert all(LEAVE.text[s.start:s.end] == s.text for s in sentences[:4])
    assert sentences[4].citation_id == "expenses@v2#c4"
    assert "[s5] The daily meal allowance" in render_passages(PASSAGES)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n-A1(")), max_size=120))
def test_sentence_spans_are_ordered_stripped_slices_covering_every_visible_character(text):
    spans = sentence_spans(text)
    assert all(a < b for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert all(text[a:b] == text[a:b].strip() for a, b in spans)
    covered = set().union(*(range(a, b) for a, b in spans)) if spans else set()
    assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered


def test_per_request_schema_only_admits_the_prompts_sentence_ids():
    schema = wire_json_schema(number_sentences(PASSAGES))
    ok = {"status": "answered", "citations": ["s1", "s5"], "answer": "8 days.", "reason": None}
    jsonschema.validate(ok, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**ok, "citations": ["s6"]}, schema)  # not in this prompt
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**ok, "citations": []}, schema)  # answered needs a citation
    jsonschema.validate({"status": "refused", "citations": [], "answer": None, "reason": "not_in_policy"}, schema)


def test_constrained_decoding_grammar_rejects_an_id_outside_the_prompt():
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    schema = wire_json_schema(number_sentences([MEALS]))
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
    good = render_wire(WireAnswered(status="answered", citations=["s1"], answer="GBP 55 a day."))
    assert _is_grammar_accept_string(grammar, good)
    assert not _is_grammar_accept_string(grammar, good.replace('"s1"', '"s2"'))


def test_a_schema_for_a_decided_status_admits_only_that_status():
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    sentences = number_sentences([MEALS])
    answered = render_wire(WireAnswered(status="answered", citations=["s1"], answer="GBP 55 a day."))
    refused = json.dumps({"status": "refused", "citations": [], "answer": None, "reason": "not_in_policy"})
    escalated = json.dumps({"status": "escalate", "citations": ["s1"], "answer": ESCALATION_PLACEHOLDER,
                            "reason": "needs_human"})
    for status, ok in (("answered", answered), ("refused", refused), ("escalate", escalated)):
        schema = wire_json_schema(sentences, status=status)
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        for text in (answered, refused, escalated):
            assert _is_grammar_accept_string(grammar, text) == (text == ok), (status, text)
            assert (jsonschema.Draft202012Validator(schema).is_valid(json.loads(text))) == (text == ok)
        assert not _is_grammar_accept_string(grammar, answered.replace('"s1"', '"s2"'))
    # a decided escalation's text is the service's template: the model may write only the
    # placeholder, while an undecided schema still admits the text the model was trained on
    free = escalated.replace(f'"answer": "{ESCALATION_PLACEHOLDER}"', '"answer": "Ask HR."')
    decided = xgr.Grammar.from_json_schema(json.dumps(wire_json_schema(sentences, status="escalate")),
                                           any_whitespace=False, separators=(", ", ": "))
    undecided = xgr.Grammar.from_json_schema(json.dumps(wire_json_schema(sentences)),
                                             any_whitespace=False, separators=(", ", ": "))
    assert not _is_grammar_accept_string(decided, free) and _is_grammar_accept_string(undecided, free)
    assert _is_grammar_accept_string(undecided, escalated)
    with pytest.raises(ValueError, match="no wire shape"):
        wire_json_schema(sentences, status="maybe")


def test_resolved_quotes_are_verbatim_and_adjacent_sentences_of_a_passage_merge():
    wire = WireAnswered(status="answered", citations=["s2", "s1", "s5"], answer="Up to 8 days, taken by 31 March.")
    answer, problems = resolve_wire_answer(wire, number_sentences(PASSAGES), PASSAGES)
    assert problems == []
    assert isinstance(answer, Answered)
    assert [c.id for c in answer.citations] == ["leave-uk@v3#c8", "expenses@v2#c4"]
    assert answer.citations[0].quote == LEAVE.text[:LEAVE.text.index("\n")]  # s1 + s2, one slice
    assert all(c.quote in {p.citation_id: p.text for p in PASSAGES}[c.id] for c in answer.citations)


def test_unknown_ids_are_reported_and_an_answer_left_without_evidence_is_refused():
    wire = parse_wire_answer('{"status": "answered", "citations": ["s9"], "answer": "Yes.", "reason": null}')
    answer, problems = resolve_wire_answer(wire, number_sentences(PASSAGES), PASSAGES)
    assert isinstance(answer, Refused) and answer.reason == "not_in_policy"
    assert problems == ["citation 's9' is not a sentence of the retrieved passages"]


def test_a_long_sentence_is_quoted_up_to_the_limit_at_a_word_boundary():
    long = PromptPassage("code@v1#c1", "Code", (), "Staff " + "must always act with integrity " * 30 + "at work.")
    wire = WireAnswered(status="answered", citations=["s1"], answer="Act with integrity.")
    answer, _ = resolve_wire_answer(wire, number_sentences([long]), [long])
    quote = answer.citations[0].quote
    assert len(quote) <= MAX_QUOTE_CHARS and long.text.startswith(quote) and not quote.endswith(" ")


def test_training_target_cites_the_sentences_the_quote_covers_and_resolves_back_to_it():
    house = Answered(status="answered", answer="Up to 8 days.",
                     citations=[Citation(id="leave-uk@v3#c8", quote="carry over up to 8 days")])
    wire = wire_from_house(house, PASSAGES)
    assert wire.citations == ["s1"]
    spanning = Answered(status="answered", answer="Up to 8 days, by 31 March.",
                        citations=[Citation(id="leave-uk@v3#c8", quote="unused leave. Carried-over days")])
    assert wire_from_house(spanning, PASSAGES).citations == ["s1", "s2"]
    resolved, _ = resolve_wire_answer(wire, number_sentences(PASSAGES), PASSAGES)
    assert "carry over up to 8 days" in resolved.citations[0].quote
    escalated = Escalated(status="escalate", answer="Contact HR.", citations=[])
    assert json.loads(render_wire(wire_from_house(escalated, PASSAGES))) == {
        "status": "escalate", "citations": [], "answer": "Contact HR.", "reason": "needs_human"}
    refused = wire_from_house(Refused(status="refused", reason="out_of_scope"), PASSAGES)
    assert isinstance(refused, WireRefused) and refused.citations == []
    with pytest.raises(ReferenceError, match="not in passage"):
        wire_from_house(Answered(status="answered", answer="x", citations=[Citation(id="leave-uk@v3#c8", quote="10 days")]), PASSAGES)


def test_wire_target_puts_citations_before_the_answer():
    text = render_wire(WireAnswered(status="answered", citations=["s1"], answer="Yes."))
    assert list(json.loads(text)) == ["status", "citations", "answer", "reason"]


def test_fingerprint_changes_with_the_prompt(monkeypatch):
    before = prompt_fingerprint()
    monkeypatch.setattr(references, "SYSTEM_PROMPT", references.SYSTEM_PROMPT + " Be brief.")
    assert prompt_fingerprint() != before
