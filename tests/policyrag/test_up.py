"""`policyrag up` (what `make run` runs): the decision of what to serve, and a second run on a
ready data folder — serving, the printed curl answering with a cited answer, Ctrl-C stopping
everything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from policyrag.up import plan
from tests.answer.hardening import OPERATOR
from tests.answer.helpers import CARRY_OVER, RESTRICTED, copy_data, free_port


def gold(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


REFUSED = {"id": "r1", "category": "restricted", "user": "alice", "question": RESTRICTED,
           "expected": {"status": "refused", "reason": "no_authorized_source"}}
LEAKY = {"id": "x1", "category": "restricted", "user": "alice", "question": CARRY_OVER,
         "expected": {"status": "refused", "reason": "no_authorized_source"}, "forbidden": ["8 days"]}


def test_the_plan_trains_evaluates_promotes_or_falls_back_to_base(corpus_data, answer_data, service, tmp_path):
    from eval.runner import run_eval

    fresh = Settings(data_dir=corpus_data)
    assert plan(fresh).action == "train"
    assert plan(Settings(data_dir=answer_data)) == plan(Settings(data_dir=answer_data))
    assert plan(Settings(data_dir=answer_data)).action == "serve" and plan(Settings(data_dir=answer_data)).version == "v1"

    data = copy_data(answer_data, tmp_path / "data")
    state = json.loads((data / "adapters" / "registry.json").read_text())
    (data / "adapters" / "registry.json").write_text(json.dumps({**state, "promoted": []}))  # registered, never promoted
    passing = Settings(data_dir=data, gold_set_file=gold(tmp_path / "pass.jsonl", [REFUSED]))
    assert plan(passing).action == "evaluate" and plan(passing).version == "v1"
    run_eval(passing, service=service, adapter="v1")
    assert plan(passing).action == "promote"

    failing = passing.model_copy(update={"gold_set_file": gold(tmp_path / "fail.jsonl", [LEAKY])})
    run_eval(failing, service=service, adapter="v1")  # the adapter says "8 days": a leak for this item
    decision = plan(failing)
    assert decision.action == "base" and "ACL leakage" in decision.why


def test_an_adapter_trained_for_another_answer_format_is_withdrawn_and_retrained(answer_data, tmp_path):
    """After an upgrade that changes the prompt or the answer format, the promoted adapter cannot
    be served: the plan says so, names it for withdrawal and trains a new one (base model meanwhile)."""
    from tuning.registry import AdapterRegistry

    data = copy_data(answer_data, tmp_path / "data")
    manifest_path = data / "adapters" / "v1" / "policyrag-adapter.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "prompt_fingerprint": "0c95626697cc6f8b"}))  # the quote-copying format
    decision = plan(Settings(data_dir=data))
    assert decision.action == "train" and "fits this prompt" in decision.why
    assert [v for v, _ in decision.withdraw] == ["v1"] and "another prompt or answer format" in decision.withdraw[0][1]
    registry = AdapterRegistry(data / "adapters")
    assert registry.withdraw("v1", reason="test") is None
    assert registry.promoted_version() is None and registry.events()[-1]["action"] == "withdraw"


@pytest.mark.slow
def test_a_second_run_serves_prints_a_working_curl_and_stops_on_ctrl_c(answer_data, tmp_path):
    data = copy_data(answer_data, tmp_path / "data")
    port = free_port()
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "policyrag", "up", "--backend", "local", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("curl "):
                break
        curl = lines[-1].strip()
        ready = time.perf_counter() - started
        assert curl.startswith(f"curl -s http://127.0.0.1:{port}/v1/hr/answer"), "".join(lines)
        assert any("adapter v1" in line for line in lines)
        for _ in range(50):  # uvicorn binds right after the banner
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        if shutil.which("curl"):
            answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True, timeout=120).stdout)
        else:  # the same request without curl
            key = curl.split("Bearer ")[1].split("'")[0]
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/hr/answer", headers={"Authorization": f"Bearer {key}"},
                                json={"question": "How many days of annual leave can I carry over?"}, timeout=120).json()
        assert answer["status"] == "answered" and answer["citations"], answer
        print(f"second run: serving after {ready:.0f} s (local backend)")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped: the answer service" in err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing left listening


def test_the_background_promotion_hot_loads_without_dropping_a_request(answer_data, local_backend, embedder, tmp_path):
    """Serve first: the base model answers at once; the registered adapter is evaluated and promoted
    beside the running service, and the next request is answered by it, no restart, no failure."""
    import threading

    from fastapi.testclient import TestClient

    from answer.app import build_service, create_app
    from answer.service import BackgroundWork
    from policyrag.up import prepare_adapter

    data = copy_data(answer_data, tmp_path / "data")
    state = json.loads((data / "adapters" / "registry.json").read_text())
    (data / "adapters" / "registry.json").write_text(json.dumps({**state, "promoted": []}))  # v1 registered only
    settings = Settings(data_dir=data, gold_set_file=gold(tmp_path / "pass.jsonl", [REFUSED]))
    decision = plan(settings)
    assert (decision.action, decision.version) == ("evaluate", "v1")
    service = build_service(settings, backend=local_backend, embedder=embedder)
    alice = {"Authorization": "Bearer demo-alice-7Qm2"}
    try:
        with TestClient(create_app(service)) as client:
            assert client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=alice).json()["versions"]["adapter"] is None
            work = service.background = BackgroundWork(title="Evaluating adapter v1")
            outcome: list = []
            gate = threading.Event()
            worker = threading.Thread(target=lambda: (gate.wait(), outcome.append(prepare_adapter(settings, service, decision, work))))
            worker.start()
            running = client.get("/v1/ops/ready", headers=OPERATOR).json()
            assert running["ready"] and running["checks"]["background"]["state"] == "running"
            assert running["checks"]["background"]["detail"].startswith("Evaluating adapter v1")
            gate.set()
            served = []
            deadline = time.monotonic() + 300
            while (worker.is_alive() or not served or served[-1] is None) and time.monotonic() < deadline:
                r = client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=alice)
                assert r.status_code == 200, r.text  # no request is dropped while the adapter changes
                served.append(r.json()["versions"]["adapter"])
            worker.join(timeout=60)
            assert outcome == ["v1"] and served[-1] == "v1"
            first = served.index("v1")
            assert all(v == "v1" for v in served[first:])  # once promoted, every answer uses it
            done = client.get("/v1/ops/ready", headers=OPERATOR).json()["checks"]
            assert done["background"]["state"] == "done" and "v1 passed the gate and is live now" in done["background"]["detail"]
            assert done["adapter"]["detail"] == "promoted adapter v1"
    finally:
        service.pipeline.retriever.store.close()


def test_a_failed_preparation_leaves_the_service_answering_and_says_why(answer_data, local_backend, embedder, tmp_path):
    from answer.app import build_service
    from answer.service import BackgroundWork
    from policyrag.up import Plan, prepare_adapter

    data = copy_data(answer_data, tmp_path / "data")
    settings = Settings(data_dir=data, gold_set_file=gold(tmp_path / "pass.jsonl", [REFUSED]))
    service = build_service(settings, backend=local_backend, embedder=embedder)
    try:
        work = BackgroundWork(title="Evaluating adapter v9")
        assert prepare_adapter(settings, service, Plan("evaluate", "v9", "test"), work) is None
        assert work.state == "failed" and "v9" in work.outcome
        assert service.pipeline.registry.promoted_version() == "v1"  # what was live stays live
    finally:
        service.pipeline.retriever.store.close()
