"""answer/request_log.py: one JSON line per request (request id, user, route, status, latency,
adapter) on the standard logging stack, joined to the answer and its audit record by request id."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest

from answer.request_log import JsonFormatter
from tests.answer.helpers import CARRY_OVER, sse_events

ALICE = {"Authorization": "Bearer demo-alice-7Qm2"}


class Lines(logging.Handler):
    """The request lines as an operator's log shipper would see them: JsonFormatter's output."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@contextlib.contextmanager
def request_lines():
    logger = logging.getLogger("answer.requests")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_an_answer_logs_one_json_line_joined_to_the_answer_and_the_audit_record(client, service):
    with request_lines() as log:
        r = client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE)
    assert r.status_code == 200, r.text
    body = r.json()
    [line] = log.records()
    assert line["event"] == "request" and line["logger"] == "answer.requests" and line["level"] == "info"
    assert line["request_id"] == body["request_id"] == r.headers["x-request-id"]
    assert (line["user"], line["method"], line["route"], line["status"]) == ("alice", "POST", "/v1/hr/answer", 200)
    assert line["adapter"] == body["versions"]["adapter"] == "v1"
    assert line["latency_ms"] >= body["latency_ms"]["total"] * 0.9
    [audited] = [a for a in service.pipeline.audit.read(user="alice") if a["request_id"] == body["request_id"]]
    assert audited["kind"] == "answer"


def test_a_stream_is_logged_when_it_ends_with_the_adapter_that_answered(client):
    with request_lines() as log:
        r = client.post("/v1/chat", json={"message": CARRY_OVER}, headers=ALICE)
    answer = next(data for kind, data in sse_events(r.text) if kind == "answer")
    [line] = log.records()
    assert line["route"] == "/v1/chat" and line["status"] == 200 and line["user"] == "alice"
    assert line["request_id"] == answer["request_id"] and line["adapter"] == "v1"
    assert line["latency_ms"] >= answer["latency_ms"]["total"] * 0.9  # the whole stream, not its first byte


@pytest.mark.parametrize(("headers", "status", "user"), [({}, 401, None), (ALICE, 200, "alice")])
def test_requests_without_an_answer_are_logged_too(client, headers, status, user):
    with request_lines() as log:
        r = client.get("/v1/me", headers=headers)
    [line] = log.records()
    assert (r.status_code, line["status"], line["user"], line["route"], line["adapter"]) == (status, status, user, "/v1/me", None)
    assert len(line["request_id"]) == 32 and line["request_id"] == r.headers["x-request-id"]


def test_a_clients_request_id_is_kept_and_a_hostile_one_replaced(client):
    with request_lines() as log:
        kept = client.get("/healthz", headers={"X-Request-ID": "gateway-0001.abc"})
        replaced = client.get("/healthz", headers={"X-Request-ID": 'x"\n{"user": "root"}'})
    first, second = log.records()
    assert kept.headers["x-request-id"] == first["request_id"] == "gateway-0001.abc"
    assert second["request_id"] == replaced.headers["x-request-id"] != 'x"\n{"user": "root"}'
    assert len(log.lines) == 2 and all("\n" not in line for line in log.lines)  # one line each
