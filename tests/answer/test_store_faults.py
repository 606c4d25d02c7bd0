"""A store that fails under a running service: 503 `store_error`, not ready, nothing audited."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from answer.app import build_service, create_app
from core.errors import StoreError
from core.settings import Settings
from tests.answer.hardening import (
    ALICE,
    ENDPOINTS,
    OPERATOR,
    assert_house_error,
)
from tests.answer.helpers import (
    CARRY_OVER,
    RESTRICTED,
    copy_data,
    free_port,
    sse_events,
)


def test_a_store_that_fails_mid_run_gives_503_store_error_not_ready_and_no_audit_record(make_service):
    svc = make_service("store-down", max_concurrent_answers=1, readiness_cache_s=0)
    with TestClient(create_app(svc)) as client:
        ok = client.post("/v1/hr/answer", json={"question": RESTRICTED}, headers=ALICE)
        assert ok.status_code == 200 and client.get("/readyz").status_code == 200
        audit_before = svc.pipeline.audit.path.read_bytes()

        svc.pipeline.retriever.store.close()  # the real Qdrant Edge shard goes away under the service

        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json() == {"ready": False}
        store = client.get("/v1/ops/ready", headers=OPERATOR).json()["checks"]["store"]
        assert store["ok"] is False and "store" in store["detail"]

        # twice the one answer slot: a slot leaked by a failed request would turn the second into 429
        for endpoint in ("/v1/hr/answer", "/v1/chat/completions", "/v1/hr/answer"):
            r = client.post(endpoint, json=ENDPOINTS[endpoint](CARRY_OVER), headers=ALICE)
            error = assert_house_error(r, 503, "store_error")
            assert r.headers["retry-after"]
            assert "store" in error["message"] and "retry" in error["message"]

        # the streams have started (200) when the store fails: they report it and end
        events = sse_events(client.post("/v1/chat", json={"message": CARRY_OVER}, headers=ALICE).text)
        assert [k for k, _ in events][-2:] == ["error", "done"] and events[-2][1]["code"] == "store_error"
        streamed = client.post("/v1/chat/completions", headers=ALICE,
                               json={"stream": True, "messages": [{"role": "user", "content": CARRY_OVER}]}).text
        assert '"code": "store_error"' in streamed and streamed.rstrip().endswith("data: [DONE]")

        # failed answers leave the audit log exactly as it was: no record, no partial line
        assert svc.pipeline.audit.path.read_bytes() == audit_before
        assert all(json.loads(line) for line in audit_before.decode().splitlines())
        text = client.get("/metrics", headers=OPERATOR).text
        assert 'policyrag_requests_total{code="503",endpoint="/v1/hr/answer"} 2.0' in text


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # qdrant-client's own version probe
def test_a_store_server_nobody_listens_on_stops_the_service_from_starting(answer_data, local_backend, embedder, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreError, match="POLICYRAG_STORE_URL") as caught:
        build_service(Settings(data_dir=copy_data(answer_data, tmp_path / "data"), store_url=dead),
                      backend=local_backend, embedder=embedder)
    assert dead in str(caught.value)
    assert time.monotonic() - started < 30
