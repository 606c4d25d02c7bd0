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
