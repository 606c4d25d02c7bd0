"""What the hardening tests share: the house error and contract checks, and hostile clients'
credentials. Everything runs against the real service (real retrieval over a copied index, the
real local backend with the tiny promoted adapter); faults are injected by breaking a real
dependency, never by mocking it."""

from __future__ import annotations

import json

from retrieval.acl import build_acl_filter

ALICE_KEY = "demo-alice-7Qm2"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": "Bearer demo-bob-3Kx9"}
OPERATOR = {"Authorization": "Bearer demo-sam-6Nc5"}  # sam is in the security group (operators)
STATUSES = {"answered", "refused", "escalate"}
ERROR_SHAPE = {"code", "message", "type"}
ENDPOINTS = {  # each answer endpoint and how it carries a question
    "/v1/hr/answer": lambda q: {"question": q},
    "/v1/chat": lambda q: {"message": q},
    "/v1/chat/completions": lambda q: {"messages": [{"role": "user", "content": q}]},
}


def assert_house_error(response, status: int, code: str | set[str]) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_SHAPE, body
    codes = {code} if isinstance(code, str) else code
    assert body["error"]["code"] in codes, body
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return body["error"]


def access_map(svc, user: str) -> tuple[set[str], set[str]]:
    """(doc ids `user` may read, strings that would betray a document they may not read).

    The betraying strings are the unreadable documents' ids and titles, minus any that a readable
    passage itself contains (a public policy may name a restricted one)."""
    acl = build_acl_filter(svc.pipeline.retriever.principal(user))
    readable, hidden, readable_text = set(), set(), []
    for _, payload in svc.pipeline.retriever.store.scroll(fields=["doc_id", "title", "groups", "region", "text"]):
        if acl.matches(payload):
            readable.add(payload["doc_id"])
            readable_text.append(payload["text"].lower())
        else:
            hidden.update({payload["doc_id"], payload["title"]})
    text = "\n".join(readable_text)
    return readable, {s for s in hidden - readable if s.lower() not in text}


def assert_contract_for(svc, user: str, body: dict, question: str) -> None:
    """The house contract, checked against what *this user* may see: a known status, an answered
    answer cited, every citation a passage retrieved for the user and its quote verbatim, no
    document the user cannot read cited, named or audited."""
    assert body["status"] in STATUSES, body
    if body["status"] == "answered":
        assert body["citations"], body
    readable, betraying = access_map(svc, user)
    shown = {p.citation_id: p for p in svc.pipeline.retriever.search(body["query"], user, k=svc.settings.answer_passages)}
    for citation in body["citations"]:
        assert citation["id"] in shown, (citation["id"], sorted(shown))
        assert citation["quote"] and citation["quote"] in shown[citation["id"]].text
        assert citation["doc_id"] in readable, citation
    text = json.dumps(body, ensure_ascii=False).lower()
    leaked = [s for s in betraying if s.lower() in text and s.lower() not in question.lower()]
    assert not leaked, leaked
    [record] = [r for r in svc.pipeline.audit.read(user=user) if r["request_id"] == body["request_id"]]
    assert {p["doc_id"] for p in record["passages"]} <= readable, record["passages"]
