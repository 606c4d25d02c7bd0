"""The answer service over HTTP: real retrieval, the real model (local backend) with a tiny
adapter, real uvicorn for the OpenAI SDK."""

from __future__ import annotations

import json

import pytest

from tests.answer.hardening import OPERATOR
from tests.answer.helpers import CARRY_OVER, CARRY_OVER_CITATION, RESTRICTED, sse_events

ALICE = {"Authorization": "Bearer demo-alice-7Qm2"}
HANNAH = {"Authorization": "Bearer demo-hannah-2Pz6"}
PAY_TEXT = ("Salary Bands and Pay Review", "pay-bands", "Reward Team", "seven career levels")  # not in the question


# -- identity ---------------------------------------------------------------------------------


def test_no_credential_is_401_with_a_stable_code(client):
    r = client.post("/v1/hr/answer", json={"question": CARRY_OVER})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer nope", "Basic abc", "Bearer a.b.c"])
def test_a_bad_credential_is_401(client, header):
    r = client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers={"Authorization": header})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_the_principal_comes_from_the_credential_never_from_the_body(client):
    r = client.post("/v1/hr/answer", json={"question": RESTRICTED, "user": "hannah"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "user" in r.json()["error"]["message"]


# -- answers ------------------------------------------------------------------------------------


def test_hr_answer_gives_a_cited_answer_resolved_to_the_document(client):
    r = client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered"
    [citation] = body["citations"]
    assert citation["id"] == CARRY_OVER_CITATION
    assert citation["title"] == "Annual Leave Policy (UK)" and citation["version"] == "3"
    assert citation["section"][-1] == "4.2 Carry-over limits"
    assert citation["quote"] in citation["passage"]
    assert citation["link"].endswith("leave-uk-v3.md#c8")
    assert body["versions"]["adapter"] == "v1"
    assert body["versions"]["documents"]["leave-uk"] == "3"
    assert body["versions"]["base_model"] == "SmolLM2-135M-Instruct"
    assert body["latency_ms"]["total"] >= body["latency_ms"]["generation"] > 0


def test_a_restricted_question_is_refused_without_the_model_and_leaks_nothing(client, service):
    before = service.metrics.tokens.labels("completion")._value.get()
    r = client.post("/v1/hr/answer", json={"question": RESTRICTED}, headers=ALICE)
    assert r.status_code == 200
    body = r.json()
    assert (body["status"], body["reason"], body["citations"]) == ("refused", "no_authorized_source", [])
    assert body["usage"]["completion_tokens"] == 0
    assert service.metrics.tokens.labels("completion")._value.get() == before
    assert not any(s.lower() in r.text.lower() for s in PAY_TEXT)


def test_every_citation_shown_verifies_against_passages_retrieved_for_the_asker(client, service):
    """Whatever the model writes, a shown citation is a passage this user was given, quoted verbatim."""
    for question, headers, user in [
        ("Can I bring my dog to the office?", ALICE, "alice"),
        ("What is the maximum I can claim for a hotel night?", HANNAH, "hannah"),
    ]:
        body = client.post("/v1/hr/answer", json={"question": question}, headers=headers).json()
        allowed = {p.citation_id: p.text for p in service.pipeline.retriever.search(body["query"], user, k=3)}
        for citation in body["citations"]:
            assert citation["id"] in allowed and citation["quote"] in allowed[citation["id"]]
        assert body["status"] in ("answered", "refused", "escalate")


def test_chat_streams_events_and_follow_ups_are_rewritten(client):
    r = client.post("/v1/chat", json={"message": CARRY_OVER}, headers=ALICE)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "meta" and kinds[-2:] == ["answer", "done"] and "token" in kinds
    answer = events[-2][1]
    assert answer["status"] == "answered" and answer["citations"][0]["id"] == CARRY_OVER_CITATION
    conversation = events[0][1]["conversation_id"]

    follow = client.post("/v1/chat", json={"message": "And what about contractors?", "conversation_id": conversation},
                         headers=ALICE)
    meta = sse_events(follow.text)[0][1]
    assert meta["query"] == f"{CARRY_OVER} Follow-up: And what about contractors?"
    # another user cannot continue alice's conversation, and cannot tell it exists
    other = client.post("/v1/chat", json={"message": "and then?", "conversation_id": conversation}, headers=HANNAH)
    missing = client.post("/v1/chat", json={"message": "and then?", "conversation_id": "nope"}, headers=HANNAH)
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["code"] == "conversation_not_found"


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_gets_a_json_error_naming_what_to_fix(client, service):
    too_long = "x" * (service.settings.max_question_chars + 1)
    r = client.post("/v1/hr/answer", json={"question": too_long}, headers=ALICE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "question_too_long"
    assert "POLICYRAG_MAX_QUESTION_CHARS" in r.json()["error"]["message"]

    r = client.post("/v1/hr/answer", json={"question": "   "}, headers=ALICE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"

    r = client.post("/v1/hr/answer", content=b"{not json", headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"

    big = json.dumps({"question": "y" * (service.settings.max_request_bytes + 10)})
    r = client.post("/v1/hr/answer", content=big, headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the streamed body is counted
        yield big.encode()

    r = client.post("/v1/hr/answer", content=chunked(), headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413

    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- operations ---------------------------------------------------------------------------------


def test_health_readiness_metrics_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text  # public: says nothing more
    # the details are for operators (sam is in the security group); not for other users
    assert client.get("/v1/ops/ready").status_code == 401
    assert client.get("/v1/ops/ready", headers=ALICE).status_code == 403
    checks = client.get("/v1/ops/ready", headers=OPERATOR).json()["checks"]
    assert checks["store"]["ok"] and checks["model_backend"]["ok"]
    assert checks["adapter"]["detail"] == "promoted adapter v1" and "passages indexed" in checks["store"]["detail"]
    assert client.get("/v1/status", headers=ALICE).json() == {"serving": "adapter v1", "background": None}

    client.post("/v1/hr/answer", json={"question": RESTRICTED}, headers=ALICE)
    # /metrics: the test client is not on loopback and no metrics token is set: operators only
    assert client.get("/metrics").status_code == 401 and client.get("/metrics", headers=ALICE).status_code == 403
    text = client.get("/metrics", headers=OPERATOR).text
    assert 'policyrag_requests_total{code="200",endpoint="/v1/hr/answer"}' in text
    assert 'policyrag_refusals_total{reason="no_authorized_source"}' in text
    assert "policyrag_request_seconds_bucket" in text and "policyrag_tokens_total" in text

    spec = client.get("/openapi.json").json()
    assert {"/v1/hr/answer", "/v1/chat", "/v1/chat/completions", "/readyz", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_readiness_fails_when_the_promoted_adapter_is_corrupted(service, client):
    path = service.pipeline.registry.load("v1").path / "adapter_model.safetensors"
    original = path.read_bytes()
    service.pipeline._verified.clear()
    try:
        path.write_bytes(original[:-8] + b"tampered")
        ready = client.get("/v1/ops/ready", headers=OPERATOR)  # checked now, not from the cache
        assert ready.status_code == 503 and not ready.json()["checks"]["adapter"]["ok"]
        assert client.get("/readyz").status_code == 503  # the public answer shares that fresh result
        r = client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE)
        assert r.status_code == 503 and r.json()["error"]["code"] == "adapter_unavailable"
        assert r.headers["retry-after"]
    finally:
        path.write_bytes(original)
        service.pipeline._verified.clear()
    assert client.get("/v1/ops/ready", headers=OPERATOR).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_the_audit_log_records_the_answer_without_unseen_text(client, service):
    client.post("/v1/hr/answer", json={"question": RESTRICTED}, headers=ALICE)
    records = list(service.pipeline.audit.read(user="alice"))
    last = records[-1]
    assert last["question"] == RESTRICTED and last["status"] == "refused"
    assert last["versions"]["adapter"] == "v1" and last["endpoint"] == "/v1/hr/answer"
    line = service.pipeline.audit.path.read_text()
    assert not any(s.lower() in line.lower() for s in PAY_TEXT)


# -- OpenAI compatibility -----------------------------------------------------------------------


def test_the_openai_sdk_works_unchanged_streaming_and_not(live_url):
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{live_url}/v1", api_key="demo-alice-7Qm2")
    completion = sdk.chat.completions.create(model="policyrag", messages=[{"role": "user", "content": CARRY_OVER}])
    text = completion.choices[0].message.content
    assert "8 days" in text and CARRY_OVER_CITATION in text  # citations travel in the text…
    extra = completion.model_extra["policyrag"]  # …and in an extra field
    assert extra["citations"][0]["id"] == CARRY_OVER_CITATION
    assert completion.usage.completion_tokens > 0

    chunks = list(sdk.chat.completions.create(
        model="policyrag", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": RESTRICTED}],
    ))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "none of the policies you have access to" in streamed
    assert chunks[-1].usage is not None

    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{live_url}/v1", api_key="wrong").chat.completions.create(
            model="policyrag", messages=[{"role": "user", "content": CARRY_OVER}])


def test_metrics_take_the_metrics_token_or_a_loopback_client_when_none_is_set(service):
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from answer.app import create_app

    app = create_app(service)
    with TestClient(app, client=("127.0.0.1", 40000)) as local, TestClient(app) as remote:
        assert local.get("/metrics").status_code == 200  # `curl localhost:8700/metrics`
        assert remote.get("/metrics").status_code == 401
        original = service.settings
        service.settings = original.model_copy(update={"metrics_token": SecretStr("scrape-me-9f2")})
        try:
            assert remote.get("/metrics", headers={"Authorization": "Bearer scrape-me-9f2"}).status_code == 200
            assert remote.get("/metrics", headers={"Authorization": "Bearer scrape-me-9f3"}).status_code == 401
            assert local.get("/metrics").status_code == 401  # with a token set, loopback needs it too
            assert remote.get("/metrics", headers=OPERATOR).status_code == 200
        finally:
            service.settings = original
