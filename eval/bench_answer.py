"""`policyrag bench answer`: the answer service end to end, vLLM backend vs the local backend in
one run, each as its own `policyrag serve` process (vLLM: the embedded, supervised server).

For each backend: p50/p95 latency of `/v1/hr/answer` for 1 user and for N concurrent users,
answer throughput (answers/s and generated tokens/s) under that concurrency, time to first token
on `/v1/chat`, and the peak RSS of the answer-service process alone (sampled every 0.25 s; the
vLLM server is a child process and is not counted). Questions are policy questions that retrieve
passages, so every request reaches the model; they are not from the gold eval set.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import httpx

from answer.vllm_server import free_port
from core.errors import PolicyRagError
from core.settings import Settings

QUESTIONS = [
    ("alice", "How many days of annual leave can I carry over?"),
    ("bob", "How much paid time off do US employees get each year?"),
    ("alice", "What is the daily limit for meals when travelling on business?"),
    ("clara", "How many days of holiday do employees in Germany get?"),
    ("alice", "When must I report a gift I received from a supplier?"),
    ("mike", "Can I work from home full time?"),
    ("alice", "How do I report a security incident?"),
    ("hannah", "How long must payroll records be kept?"),
]


BACKENDS = ("vllm", "vllm-lora", "local")  # vllm: the promoted adapter merged; vllm-lora: run-time LoRA


class BenchError(PolicyRagError):
    code = "bench_failed"
    http_status = 500  # a benchmark is never an HTTP answer; a failure of ours


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class _Service:
    """`policyrag serve --backend B` in its own process group, stopped with SIGINT like Ctrl-C."""

    def __init__(self, backend: str, settings: Settings, log: Path) -> None:
        self.backend = backend
        served = "local" if backend == "local" else "vllm"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "POLICYRAG_DATA_DIR": str(settings.data_dir), "POLICYRAG_VLLM_PORT": str(free_port()),
               # throughput, not fairness: the per-user share would turn a user's 5th parallel
               # request into 429 (the questions come from 6 users)
               "POLICYRAG_MAX_CONCURRENT_ANSWERS": "64", "POLICYRAG_MAX_ANSWERS_PER_USER": "64",
               # vllm: the promoted adapter merged into its base weights; vllm-lora: run-time LoRA
               "POLICYRAG_SERVE_MERGED": str(backend == "vllm").lower()}
        env.pop("POLICYRAG_VLLM_URL", None)  # always the embedded server
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "policyrag", "serve", "--backend", served, "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.peak_rss = 0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process(self.process.pid)
        while self._sampling:
            try:
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.25)

    def wait_ready(self, timeout: float) -> float:
        started = time.perf_counter()
        self._sampler.start()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise BenchError(f"policyrag serve --backend {self.backend} exited ({self.process.returncode}); see {self._log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise BenchError(f"the {self.backend} service was not ready within {timeout:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        self._sampling = False
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def _ask(client: httpx.Client, user_key: dict[str, str], user: str, question: str) -> dict:
    started = time.perf_counter()
    r = client.post("/v1/hr/answer", json={"question": question}, headers={"Authorization": f"Bearer {user_key[user]}"})
    wall = time.perf_counter() - started
    if r.status_code != 200:
        raise BenchError(f"/v1/hr/answer answered {r.status_code}: {r.text[:200]}")
    body = r.json()
    return {"s": wall, "tokens": body["usage"]["completion_tokens"], "status": body["status"],
            "merged": body["versions"].get("merged", False)}


def _ttft(client: httpx.Client, key: str, question: str) -> float:
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat", json={"message": question}, headers={"Authorization": f"Bearer {key}"}) as r:
        for line in r.iter_lines():
            if line == "event: token":
                return time.perf_counter() - started
    raise BenchError("the chat stream sent no token")


def bench_backend(backend: str, settings: Settings, *, single: int, users: int, rounds: int, ttft: int,
                  log: Path, console=None, adapter: str | None = None) -> dict:
    from retrieval.directory import load_directory

    keys = {uid: u.api_key for uid, u in load_directory(settings.directory_file).users.items() if u.api_key}
    service = _Service(backend, settings, log)
    try:
        if console:
            console.print(f"[dim]{backend}: starting the service…[/]")
        started_at = time.perf_counter()
        ready_s = service.wait_ready(settings.vllm_start_timeout_s + 120)
        with httpx.Client(base_url=service.url, timeout=600) as client:
            warm = _ask(client, keys, *QUESTIONS[0])  # warm-up, not counted
            deadline = time.perf_counter() + settings.vllm_start_timeout_s + 120
            while backend == "vllm" and adapter and not warm["merged"] and time.perf_counter() < deadline:
                # the merged server starts in the background (its compile ~60 s idle): measure what
                # it serves; ask rarely, since each answer meanwhile slows the compile on 2 cores
                time.sleep(15)
                warm = _ask(client, keys, *QUESTIONS[0])
            merged_s = time.perf_counter() - started_at if backend == "vllm" and adapter else None
            if console:
                console.print(f"[dim]{backend}: ready in {ready_s:.0f} s; 1 user × {single}…[/]")
            one = [_ask(client, keys, *QUESTIONS[i % len(QUESTIONS)]) for i in range(single)]
            if console:
                console.print(f"[dim]{backend}: {users} concurrent users × {rounds}…[/]")
            jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(users * rounds)]
            started = time.perf_counter()
            with ThreadPoolExecutor(users) as pool:
                many = list(pool.map(lambda job: _ask(client, keys, *job), jobs))
            wall = time.perf_counter() - started
            if console:
                console.print(f"[dim]{backend}: time to first token × {ttft}…[/]")
            firsts = [_ttft(client, keys[u], q) for u, q in QUESTIONS[:ttft]]
    finally:
        service.stop()
    return {
        "backend": backend,
        "ready_s": round(ready_s, 1),
        "merged_serving_s": None if merged_s is None else round(merged_s, 1),
        "answered_by_merged": sum(r["merged"] for r in one + many),
        "single": {"p50_s": round(median(r["s"] for r in one), 2), "p95_s": round(_pct([r["s"] for r in one], 0.95), 2),
                   "tokens_median": median(r["tokens"] for r in one)},
        "concurrent": {"users": users, "answers": len(many),
                       "p50_s": round(median(r["s"] for r in many), 2), "p95_s": round(_pct([r["s"] for r in many], 0.95), 2),
                       "answers_per_s": round(len(many) / wall, 3),
                       "tokens_per_s": round(sum(r["tokens"] for r in many) / wall, 1)},
        "ttft": {"p50_s": round(median(firsts), 2), "max_s": round(max(firsts), 2)},
        "service_peak_rss_mib": round(service.peak_rss / 2**20),
        "statuses": sorted({r["status"] for r in one + many}),
    }


def run_answer_benchmark(settings: Settings, *, backends=BACKENDS, single: int = 6, users: int = 8,
                         rounds: int = 2, ttft: int = 3, console=None) -> dict:
    from tuning.registry import AdapterRegistry

    adapter = AdapterRegistry(settings.adapters_dir).promoted_version()
    log = settings.data_dir / "logs" / "bench-answer.log"
    results = {b: bench_backend(b, settings, single=single, users=users, rounds=rounds, ttft=ttft, log=log,
                                console=console, adapter=adapter) for b in backends}
    summary = {"adapter": adapter, "cpus": os.cpu_count()}
    if "vllm" in results and "local" in results:
        summary["throughput_ratio"] = round(results["vllm"]["concurrent"]["answers_per_s"]
                                            / results["local"]["concurrent"]["answers_per_s"], 2)
    if "vllm" in results and "vllm-lora" in results:  # issue 16: merged against run-time LoRA
        merged, lora = results["vllm"], results["vllm-lora"]
        summary["merged_vs_lora"] = {
            "single_p50": round(lora["single"]["p50_s"] / merged["single"]["p50_s"], 2),
            "answers_per_s": round(merged["concurrent"]["answers_per_s"] / lora["concurrent"]["answers_per_s"], 2),
            "gen_tokens_per_s": round(merged["concurrent"]["tokens_per_s"] / lora["concurrent"]["tokens_per_s"], 2)}
    out = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "summary": summary, "results": results}
    folder = settings.data_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"answer-{out['at'][:19].replace(':', '')}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def print_answer_results(out: dict, console) -> None:
    from rich.table import Table

    s = out["summary"]
    table = Table(title=f"answer service, adapter {s['adapter'] or 'none (base model)'}, {s['cpus']} CPUs")
    for column in ("backend", "1 user p50 / p95 s", f"{next(iter(out['results'].values()))['concurrent']['users']} users p50 / p95 s",
                   "answers/s", "gen tok/s", "TTFT p50 s", "service RSS MiB", "ready s"):
        table.add_column(column)
    for r in out["results"].values():
        table.add_row(r["backend"], f"{r['single']['p50_s']} / {r['single']['p95_s']}",
                      f"{r['concurrent']['p50_s']} / {r['concurrent']['p95_s']}", str(r["concurrent"]["answers_per_s"]),
                      str(r["concurrent"]["tokens_per_s"]), str(r["ttft"]["p50_s"]), str(r["service_peak_rss_mib"]),
                      str(r["ready_s"]))
    console.print(table)
    if "throughput_ratio" in s:
        console.print(f"vLLM / local throughput at {out['results']['vllm']['concurrent']['users']} users: "
                      f"{s['throughput_ratio']}x (target >= 3x)")
    if "merged_vs_lora" in s:
        r = s["merged_vs_lora"]
        console.print(f"merged / run-time LoRA: single-user p50 {r['single_p50']}x faster, answers/s {r['answers_per_s']}x, "
                      f"generated tok/s {r['gen_tokens_per_s']}x")
    if "vllm" in out["results"]:
        v = out["results"]["vllm"]
        console.print(f"single-user p50 with vLLM: {v['single']['p50_s']} s (target <= 2 s); "
                      f"service RSS {v['service_peak_rss_mib']} MiB (target < 1536)")
