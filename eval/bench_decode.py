"""`policyrag bench decode`: how fast the served model writes an answer, three ways on the same
prompts, one request at a time, in one run: the base model, the promoted adapter through vLLM's
run-time LoRA, and the adapter merged into the base weights (what `serve` answers with,
answer/merged.py). Each on its own embedded vLLM server, started one after the other so that
they never share the CPU.

Decode speed is (completion tokens - 1) / (total - time to first token) of a streamed, greedy,
schema-constrained answer (`core.references.wire_json_schema`), as the service asks it. The
prompts are the answer benchmark's questions with the passages their users retrieve.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from statistics import median

from core.settings import Settings
from eval.bench_answer import QUESTIONS, BenchError


def _prompts(settings: Settings):
    from core.prompt import build_messages, number_sentences
    from retrieval.retriever import Retriever

    retriever = Retriever.from_settings(settings)
    try:
        out = []
        for user, question in QUESTIONS:
            passages = retriever.search(question, user, k=settings.answer_passages)
            if passages:
                out.append((build_messages(question, passages), number_sentences(passages)))
        return out
    finally:
        retriever.store.close()


def _measure(settings: Settings, model_dir: Path, adapter, prompts, *, label: str, repeats: int) -> dict:
    from answer.backends import VllmBackend
    from answer.vllm_server import VllmServer, free_port
    from core.references import wire_json_schema

    server = VllmServer(model_dir, settings, port=free_port(), restart=False, lora=label != "merged",
                        log_path=settings.data_dir / "logs" / f"bench-decode-{label}.log")
    started = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - started
    backend = VllmBackend(server.url, api_key=server.api_key, timeout_s=settings.generation_timeout_s)
    try:
        messages, sentences = prompts[0]
        backend.generate(messages, adapter, max_tokens=settings.answer_max_tokens, on_token=lambda t: None,
                         schema=wire_json_schema(sentences))  # warm-up: loads the adapter, fills caches
        runs = []
        for _ in range(repeats):
            for messages, sentences in prompts:
                t0 = time.perf_counter()
                g = backend.generate(messages, adapter, max_tokens=settings.answer_max_tokens, on_token=lambda t: None,
                                     schema=wire_json_schema(sentences))
                total = time.perf_counter() - t0
                if g.completion_tokens > 1 and g.first_token_s is not None and total > g.first_token_s:
                    runs.append((total, g.first_token_s, (g.completion_tokens - 1) / (total - g.first_token_s),
                                 g.completion_tokens))
    finally:
        backend.close()
        server.stop()
    if not runs:
        raise BenchError(f"{label}: no answer of more than one token was generated")
    return {"server_start_s": round(start_s, 1), "answers": len(runs),
            "p50_s": round(median(r[0] for r in runs), 3), "ttft_p50_s": round(median(r[1] for r in runs), 3),
            "decode_tok_s": round(median(r[2] for r in runs), 1), "tokens_median": median(r[3] for r in runs)}


def run_decode_benchmark(settings: Settings, *, adapter_version: str | None = None, repeats: int = 2,
                         console=None) -> dict:
    from answer.backends import AdapterRef
    from core.provision import base_model_identity
    from tuning.export import export_merged
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(settings.adapters_dir)
    version = adapter_version or registry.promoted_version()
    if version is None:
        raise BenchError("no adapter is promoted: name one (--adapter vN)")
    record = registry.load(version)
    ref = AdapterRef(version, record.path, dict(record.manifest.files))
    base_dir, _ = base_model_identity(settings)
    prompts = _prompts(settings)
    say = console.print if console else (lambda *a: None)
    t0 = time.perf_counter()
    merged_dir = export_merged(record, settings.data_dir / "merged" / ref.served_name)
    export_s = time.perf_counter() - t0
    results = {}
    for label, model_dir, adapter in (("base", base_dir, None), ("lora", base_dir, ref), ("merged", merged_dir, None)):
        say(f"[dim]{label}: starting its vLLM server and answering {len(prompts)} × {repeats}…[/]")
        results[label] = _measure(settings, model_dir, adapter, prompts, label=label, repeats=repeats)
    ratios = {
        "merged_vs_base_decode": round(results["merged"]["decode_tok_s"] / results["base"]["decode_tok_s"], 2),
        "lora_vs_base_decode": round(results["lora"]["decode_tok_s"] / results["base"]["decode_tok_s"], 2),
        "merged_vs_lora_p50": round(results["lora"]["p50_s"] / results["merged"]["p50_s"], 2),
    }
    out = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "adapter": version,
           "merge_export_s": round(export_s, 1), "results": results, "ratios": ratios}
    folder = settings.data_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"decode-{out['at'][:19].replace(':', '')}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def print_decode_results(out: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"decode, adapter {out['adapter']}, one request at a time, vLLM CPU")
    for column in ("served as", "answer p50 s", "TTFT p50 s", "decode tok/s", "tokens", "server start s"):
        table.add_column(column)
    for label, r in out["results"].items():
        table.add_row(label, str(r["p50_s"]), str(r["ttft_p50_s"]), str(r["decode_tok_s"]), str(r["tokens_median"]),
                      str(r["server_start_s"]))
    console.print(table)
    r = out["ratios"]
    console.print(f"merged / base decode: {r['merged_vs_base_decode']}x (target >= 0.95x); run-time LoRA / base: "
                  f"{r['lora_vs_base_decode']}x; merged answers {r['merged_vs_lora_p50']}x faster than LoRA (p50); "
                  f"merge export {out['merge_export_s']} s")
