"""Training pairs come from the real retriever, for real principals, and never carry text from
documents outside the training audience."""

import json

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from retrieval.acl import build_acl_filter
from tuning.pairs import PairBuilder, split_of
from tuning.seeds import Seed

RESTRICTED_DOCS = {"pay-bands", "executive-compensation", "investigations-procedure", "security-incident-runbook"}
CANARIES = ("78,000", "Project Bluebell", "Project Kestrel", "Operation Larkspur", "Nightjar", "Greyfriars")

SEEDS = [
    Seed(id="meal", kind="answered", user="alice", question="What is the daily meal allowance on a business trip?",
         paraphrases=("How much may I claim for meals per day when I travel on business?",),
         answer="The daily meal allowance is GBP 55 in the UK.", doc_id="expenses",
         quote="The daily meal allowance is GBP 55 in the UK, USD 70 in the US and EUR 60 in Germany."),
    Seed(id="band", kind="answered", user="hannah", question="What is the salary range for band L5 in the UK?",
         answer="Band L5 UK is £78,000–£96,000.", doc_id="pay-bands", quote="£78,000"),
    Seed(id="japan", kind="not_in_policy", user="alice", doc_id="expenses",
         question="What is the daily meal allowance for a business trip to Japan?"),
    Seed(id="poem", kind="out_of_scope", user="bob", question="Write me a short poem about the sea."),
    Seed(id="car", kind="no_source", user="bob", question="Do I get a company car allowance?"),
]
CARRY_OVER = Seed(id="carry", kind="answered", user="alice", question="How many days of annual leave can I carry over?",
                  answer="Up to 8 days.", doc_id="leave-uk",
                  quote="Employees may carry over up to 8 days of unused annual leave into the next leave year.")


def _builder(retriever):
    return PairBuilder(retriever, k=3, audience=("all-staff", "contractors"))


def test_answered_seed_cites_the_retrieved_passage_holding_its_quote(corpus_retriever):
    candidates, rejections = _builder(corpus_retriever).build(SEEDS[:1])
    variants = {c.variant for c in candidates}
    assert {"original", "shuffled", "distractor", "restricted"} <= variants
    for c in candidates:
        if c.target.status == "answered":
            cited = c.target.citations[0]
            passage = next(p for p in c.context if p.citation_id == cited.id)
            assert passage.doc_id == "expenses" and cited.quote in passage.text
    original = next(c for c in candidates if c.variant == "original")
    shuffled = next(c for c in candidates if c.variant == "shuffled")
    assert shuffled.context != original.context and set(shuffled.context) == set(original.context)
    distractor = next(c for c in candidates if c.variant == "distractor")
    assert sum(p.doc_id == "expenses" for p in distractor.context) == 1


def test_restricted_variant_refuses_for_a_user_who_may_not_read_the_source(corpus_retriever):
    candidates, rejections = _builder(corpus_retriever).build(SEEDS[:2])
    restricted = [c for c in candidates if c.variant == "restricted"]
    assert {c.seed.id for c in restricted} == {"meal", "band"}
    for c in restricted:
        assert c.target.status == "refused" and c.target.reason == "no_authorized_source"
        who = corpus_retriever.principal(c.user)
        chunk = _builder(corpus_retriever)._doc_chunks()[c.seed.doc_id]
        assert not build_acl_filter(who).matches(chunk.to_store())
        assert all(p.doc_id != c.seed.doc_id for p in c.context)
    # the pay-bands seed is outside the audience: no answered pair, and the reason is reported
    assert not [c for c in candidates if c.seed.id == "band" and c.variant != "restricted"]
    assert any(r.seed_id == "band" and r.rule == "outside_audience" for r in rejections)


def test_unsupported_variant_refuses_when_the_source_is_taken_out_of_the_context(corpus_retriever):
    """The asker may read the source, but the context is what retrieval brings after it: passages
    near the subject that do not hold the answer. The target refuses instead of answering from them."""
    candidates, _ = _builder(corpus_retriever).build(SEEDS[:2])
    unsupported = [c for c in candidates if c.variant == "unsupported"]
    assert [c.seed.id for c in unsupported] == ["meal"]  # not for the seed outside the audience
    (c,) = unsupported
    assert c.user == "alice" and c.question == SEEDS[0].question
    assert c.target.status == "refused" and c.target.reason == "no_authorized_source"
    assert 1 <= len(c.context) <= 3
    assert all(p.doc_id != "expenses" and SEEDS[0].quote not in p.text for p in c.context)


def test_refusal_kinds_get_their_reasons(corpus_retriever):
    candidates, _ = _builder(corpus_retriever).build(SEEDS[2:])
    reasons = {c.seed.id: c.target.reason for c in candidates if c.variant == "original"}
    assert reasons == {"japan": "not_in_policy", "poem": "out_of_scope", "car": "no_authorized_source"}


def test_no_training_text_comes_from_restricted_documents(corpus_retriever):
    candidates, _ = _builder(corpus_retriever).build(SEEDS)
    assert candidates
    for c in candidates:
        blob = json.dumps([p.model_dump() for p in c.context])
        assert not {p.doc_id for p in c.context} & RESTRICTED_DOCS
        assert not any(canary in blob for canary in CANARIES)


def test_region_only_documents_do_not_train_the_adapter_every_region_is_served(corpus_retriever):
    """Issue 15 #12: leave-uk is readable by all-staff, but only in the UK; the adapter answers US and
    DE staff too, so the UK text must not be learned (unless an operator adds UK to the regions)."""
    candidates, rejections = _builder(corpus_retriever).build([CARRY_OVER])
    assert any(r.seed_id == "carry" and r.rule == "outside_audience" for r in rejections)
    assert not [c for c in candidates if c.target.status == "answered"]
    chunks = _builder(corpus_retriever)._doc_chunks()
    for c in candidates:
        assert all(chunks[p.doc_id].region == "global" for p in c.context), c.variant
    # the opt-in: training for the UK region as well learns the UK rule, cited from leave-uk
    uk = PairBuilder(corpus_retriever, k=3, audience=("all-staff", "contractors"), regions=("global", "UK"))
    answered = [c for c in uk.build([CARRY_OVER])[0] if c.target.status == "answered"]
    assert answered and all(c.target.citations[0].id.startswith("leave-uk@") for c in answered)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.sampled_from(["alice", "bob", "clara", "mike", "hannah", "leo", "carla", "sam", "erin", "connor"]),
    question=st.sampled_from([
        "What is the salary band for L5 in the UK?", "executive bonus multiplier", "investigation code name",
        "SEV1 incident bridge", "daily meal allowance", "carry over annual leave", "gifts from suppliers",
    ]) | st.text(min_size=3, max_size=40).filter(lambda s: s.strip()),
)
def test_training_contexts_hold_only_what_the_user_and_the_audience_may_read(corpus_retriever, user, question):
    builder = _builder(corpus_retriever)
    chunks = builder._doc_chunks()
    who = corpus_retriever.principal(user)
    for passage in builder._context(question, user):
        chunk = chunks[passage.doc_id]
        assert build_acl_filter(who).matches(chunk.to_store())
        assert set(chunk.groups) & {"all-staff", "contractors"}
        assert chunk.region == "global"


def test_held_out_split_is_per_seed_and_stable():
    assert split_of("meal", 0.5) == split_of("meal", 0.5)
    splits = {split_of(f"seed-{i}", 0.2) for i in range(200)}
    assert splits == {"train", "heldout"}
    share = sum(split_of(f"seed-{i}", 0.2) == "heldout" for i in range(1000)) / 1000
    assert 0.15 < share < 0.25
