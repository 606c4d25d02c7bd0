"""The status decider in the answer pipeline (local backend, real model, tiny adapter): the
decided status is the answer's status, the decision is recorded, it can be switched off, and a
decider file changed after registration makes the adapter unusable."""

from __future__ import annotations

import contextlib

import pytest

from answer.backends import AdapterUnavailable
from core.references import ESCALATION_PLACEHOLDER
from core.settings import Settings
from tests.answer.helpers import CARRY_OVER, copy_data, register_with_decider
from tuning.status import DECIDER_FILE, FEATURES, STATUSES


@pytest.fixture(scope="module")
def decider_data(answer_data, tmp_path_factory):
    data = copy_data(answer_data, tmp_path_factory.mktemp("decider") / "data")
    versions = {status: register_with_decider(data, status) for status in ("refused", "escalate")}
    return data, versions


@contextlib.contextmanager
def _service(data, local_backend, embedder, **settings):
    from answer.app import build_service

    svc = build_service(Settings(data_dir=data, **settings), backend=local_backend, embedder=embedder)
    try:
        yield svc
    finally:
        svc.pipeline.retriever.store.close()


def test_the_decided_status_is_the_status_of_the_answer(decider_data, local_backend, embedder):
    data, versions = decider_data
    with _service(data, local_backend, embedder) as svc:
        pipeline = svc.pipeline
        alice = pipeline.retriever.principal("alice")
        plain = pipeline.answer(alice, CARRY_OVER, adapter_version="v1")  # no decider: the model's own
        assert plain.status == "answered" and plain.status_decision is None

        refused = pipeline.answer(alice, CARRY_OVER, adapter_version=versions["refused"])
        assert refused.status == "refused" and refused.answer.reason and not refused.citations
        decision = refused.status_decision
        assert decision["status"] == "refused" and decision["scores"]["refused"] > 0.99
        assert list(decision["features"]) == list(FEATURES)
        # the evidence is real: the model's own status tokens favour answering here, and the
        # passages are close to the question
        lp = decision["features"]
        assert lp["lp_answered"] > lp["lp_refused"] and lp["max_sentence_cosine"] > 0.5

        escalated = pipeline.answer(alice, CARRY_OVER, adapter_version=versions["escalate"])
        assert escalated.status == "escalate" and escalated.status_decision["status"] == "escalate"
        # the escalation says the configured thing, naming the team that owns the cited document
        by_id = {p.citation_id: p for p in escalated.passages}
        source = by_id[escalated.answer.citations[0].id] if escalated.answer.citations else escalated.passages[0]
        assert source.owner and escalated.answer.answer == svc.settings.escalation_template.format(
            owner=source.owner, title=source.title)
        # the model wrote the placeholder, not text the template replaces (issue 16)
        assert f'"answer": "{ESCALATION_PLACEHOLDER}"' in escalated.raw_text, escalated.raw_text


def test_switched_off_the_model_chooses_the_status(decider_data, local_backend, embedder):
    data, versions = decider_data
    with _service(data, local_backend, embedder, status_decider=False) as svc:
        alice = svc.pipeline.retriever.principal("alice")
        result = svc.pipeline.answer(alice, CARRY_OVER, adapter_version=versions["refused"])
        assert result.status == "answered" and result.status_decision is None


def test_a_decider_changed_after_registration_makes_the_adapter_unusable(decider_data, local_backend, embedder, tmp_path):
    data, _ = decider_data
    data = copy_data(data, tmp_path / "data")
    version = register_with_decider(data, "refused")
    path = data / "adapters" / version / DECIDER_FILE
    path.write_text(path.read_text().replace("20.0", "-20.0"))
    with _service(data, local_backend, embedder) as svc:
        alice = svc.pipeline.retriever.principal("alice")
        with pytest.raises(AdapterUnavailable, match="status-decider.json does not match its recorded hash"):
            svc.pipeline.answer(alice, CARRY_OVER, adapter_version=version)


def test_the_local_backend_lists_the_status_tokens(decider_data, local_backend, embedder):
    from core.prompt import build_messages
    from tuning.status import status_logprobs

    data, versions = decider_data
    with _service(data, local_backend, embedder) as svc:
        pipeline = svc.pipeline
        alice = pipeline.retriever.principal("alice")
        passages = pipeline.retriever.search(CARRY_OVER, alice, k=3)
        adapter = pipeline.current_adapter("v1")
        top = local_backend.status_top_logprobs(build_messages(CARRY_OVER, passages), adapter)
        lp = dict(zip(STATUSES, status_logprobs(top)))
        # the tiny adapter was trained to answer this question: "answered" is its likeliest start
        assert max(top, key=top.get) == "answered" and lp["answered"] > -0.5, top
