"""answer/pipeline.py: follow-up rewriting (the rest of the pipeline is exercised through the service)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from answer.pipeline import rewrite_follow_up


def test_follow_ups_are_joined_to_the_previous_question_and_others_stand_alone():
    prev = ["How many days of annual leave can I carry over?"]
    assert rewrite_follow_up("What about contractors?", prev) == f"{prev[0]} Follow-up: What about contractors?"
    assert rewrite_follow_up("Does that apply in Germany too?", prev).startswith(prev[0])
    standalone = "What is the maximum hotel rate for a business trip to London?"
    assert rewrite_follow_up(standalone, prev) == standalone
    assert rewrite_follow_up("and  if I am  part-time?", []) == "and if I am part-time?"


@given(st.text(min_size=1, max_size=200), st.lists(st.text(min_size=1, max_size=80), max_size=3))
def test_a_rewrite_always_keeps_the_question(question, previous):
    out = rewrite_follow_up(question, previous)
    assert " ".join(question.split()) in out


def test_a_chain_of_follow_ups_keeps_the_subject_and_stays_three_questions_long():
    first = "How many days of annual leave can I carry over?"
    turns = [first, "What about in Germany?"] + [f"And for contractors, case {n}?" for n in range(100)]
    query = rewrite_follow_up("Does that apply to part-timers?", turns)
    assert query == f"{first} Follow-up: And for contractors, case 99? Follow-up: Does that apply to part-timers?"
    # a new stand-alone question becomes the anchor
    turns.append("What is the maximum hotel rate for a business trip to London?")
    assert rewrite_follow_up("And in Manchester?", turns) == f"{turns[-1]} Follow-up: And in Manchester?"
