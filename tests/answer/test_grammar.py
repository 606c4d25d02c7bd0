"""answer/grammar.py: the decoding grammar is the wire schema without its length bounds, and the
service bounds an answer's text itself."""

from __future__ import annotations

import json

import jsonschema
import pytest

from answer.grammar import JSON_GRAMMAR, decoding_schema, house_grammar
from core.contract import MAX_ANSWER_CHARS, AnswerFormatError
from core.prompt import PromptPassage, number_sentences
from core.references import (
    WireAnswered,
    WireEscalated,
    parse_wire_answer,
    render_wire,
    wire_json_schema,
)

MEALS = PromptPassage("expenses@v2#c4", "Expenses Policy", ("3.1 Meals",),
                      "The daily meal allowance is GBP 55 in the UK. Receipts are required.")


def _accepts(ebnf: str, text: str) -> bool:
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string

    return _is_grammar_accept_string(xgr.Grammar.from_ebnf(ebnf), text)


def test_the_decoding_schema_drops_only_the_length_bounds():
    schema = wire_json_schema(number_sentences([MEALS]))
    assert "maxLength" in json.dumps(schema)
    plain = decoding_schema(schema)
    assert "maxLength" not in json.dumps(plain)
    assert json.dumps(plain).count('"enum"') == json.dumps(schema).count('"enum"')  # citation ids kept
    assert "minLength" in json.dumps(plain) and "maxItems" in json.dumps(plain)
    long_text = "x " * MAX_ANSWER_CHARS
    ok = {"status": "answered", "citations": ["s1"], "answer": long_text, "reason": None}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ok, schema)
    jsonschema.validate(ok, plain)
    with pytest.raises(jsonschema.ValidationError):  # everything else still holds
        jsonschema.validate({**ok, "citations": ["s3"]}, plain)


def test_the_house_grammar_keeps_ids_status_and_separators_and_admits_a_long_answer():
    sentences = number_sentences([MEALS])
    grammar = house_grammar(wire_json_schema(sentences, status="answered"))
    good = render_wire(WireAnswered(status="answered", citations=["s2"], answer="Yes, keep receipts."))
    assert _accepts(grammar, good)
    assert not _accepts(grammar, good.replace('"s2"', '"s3"'))  # not a sentence of this prompt
    assert not _accepts(grammar, good.replace('"status": "answered"', '"status": "refused"'))
    assert not _accepts(grammar, good.replace('", "', '",\t"'))  # no free whitespace
    long_answer = good.replace("Yes, keep receipts.", "word " * 200)
    assert _accepts(grammar, long_answer)
    assert JSON_GRAMMAR["separators"] == (", ", ": ")


def test_an_over_long_answer_is_cut_at_a_word_boundary_and_said_so():
    text = render_wire(WireAnswered(status="answered", citations=["s1"], answer="GBP 55 a day. " * 10))
    assert parse_wire_answer(text, cuts=[]).answer == "GBP 55 a day. " * 10  # within the limit: as is
    long = json.dumps({**json.loads(text), "answer": "allowance " * 100})
    with pytest.raises(AnswerFormatError, match="answer"):
        parse_wire_answer(long)
    cuts: list[str] = []
    wire = parse_wire_answer(long, cuts=cuts)
    assert len(wire.answer) <= MAX_ANSWER_CHARS and wire.answer.endswith("…")
    assert wire.answer[:-1].split() == ["allowance"] * len(wire.answer[:-1].split())  # whole words
    assert cuts == [f"answer text cut from 1000 to at most {MAX_ANSWER_CHARS} characters"]
    with pytest.raises(AnswerFormatError):  # a cut never rescues another fault
        parse_wire_answer(long.replace('"answered"', '"maybe"'), cuts=[])


def test_an_output_stopped_at_the_token_limit_inside_its_answer_is_closed_at_a_word_boundary():
    """Found on CUAD (run 20261207T164106-618365): a model repeating itself ran to max_tokens
    inside the answer string; without the grammar's length bound that was unparseable, so the
    service refused. It is now closed at its last whole word, with its citations, and said so."""
    full = render_wire(WireAnswered(status="answered", citations=["s5", "s6"], answer="x"))
    head = full[: full.index('"answer": "') + len('"answer": "')]
    for body, expected in [
        ("to make, have made, use, reproduce, reprodu", "to make, have made, use, reproduce,…"),
        ("reproduce, " * 120 + "repr", None),  # over MAX_ANSWER_CHARS: cut to the bound
        ('the \\"Licensed Product\\" and \\u20', 'the "Licensed Product"…'),  # a cut escape; "and" may be partial
    ]:
        text = head + body
        with pytest.raises(AnswerFormatError):
            parse_wire_answer(text)  # without `cuts` nothing is rescued
        cuts: list[str] = []
        wire = parse_wire_answer(text, cuts=cuts)
        assert wire.status == "answered" and wire.citations == ["s5", "s6"]
        assert len(wire.answer) <= MAX_ANSWER_CHARS and wire.answer.endswith("…")
        if expected is not None:
            assert wire.answer == expected
        else:
            assert set(wire.answer[:-1].replace(",", "").split()) == {"reproduce"}
        assert len(cuts) == 1 and "token limit" in cuts[0]
    escalate = render_wire(WireEscalated(status="escalate", citations=["s1"], answer="x"))
    wire = parse_wire_answer(escalate[: escalate.index('"answer": "') + 11] + "Please talk to", cuts=[])
    assert wire.status == "escalate" and wire.answer == "Please talk…"
    for broken in ['{"status": "answered", "citations": ["s1"', '{"status": "maybe", "citations": ["s1"], "answer": "Yes it',
                   '{"status": "answered", "citations": ["s1"], "answer": "', 'not json at all']:
        with pytest.raises(AnswerFormatError):  # nothing to close, or another fault: refused as before
            parse_wire_answer(broken, cuts=[])
