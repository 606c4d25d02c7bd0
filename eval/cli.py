"""`policyrag eval`, `report`, `checklist`, `review export|import` and `bench ...` (registered on the root
app in policyrag/cli.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.settings import check_backends, get_settings, settings_for_backend
from core.terminal import console, err_console

review_app = typer.Typer(help="Human review of an eval run's edge cases.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, each against its baseline in one run.", no_args_is_help=True)


def eval_command(
    adapter: Annotated[str, typer.Option(help="adapter version, 'promoted' or 'base'")] = "promoted",
    baseline: Annotated[str | None, typer.Option(help="'base', 'promoted' or a version, run on the same items")] = None,
    set_path: Annotated[Path | None, typer.Option("--set", help="eval set JSONL (default: the locked gold set)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items (a partial run never passes the gate)")] = None,
    unconstrained: Annotated[int, typer.Option(min=0, help="also measure schema validity without constrained decoding on N items")] = 0,
    external: Annotated[Path | None, typer.Option(help="an external set folder (docs/ + qa.jsonl), or a folder of them "
                                                  "such as ../shared/benchmarks; indexed on its own as public documents")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm or local (default: POLICYRAG_ANSWER_BACKEND)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the eval set (or external sets) through the real answer pipeline and score it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from answer.app import build_service
    from eval.gold import load_gold_set
    from eval.runner import run_eval

    settings = settings_for_backend(backend)
    if external is not None:
        from eval.external import load_external_set, run_external, set_folders

        sets = [(folder, len(load_external_set(folder)[0].items)) for folder in set_folders(external)]
    else:
        sets = [(None, len(load_gold_set(set_path or settings.gold_set_file).items))]
    with err_console.status("starting the answer pipeline") as status:
        service = build_service(settings, on_stage=status.update)
    outs = []
    try:
        for folder, total in sets:
            runs = (1 + (baseline is not None)) * (min(limit, total) if limit else total) + unconstrained
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=err_console) as progress:
                task = progress.add_task("eval", total=runs)
                stage = dict(on_stage=lambda text: progress.update(task, description=text),
                             on_item=lambda row: progress.advance(task))
                if folder is None:
                    outs.append(run_eval(settings, service=service, adapter=adapter, baseline=baseline,
                                         set_path=set_path, limit=limit, unconstrained=unconstrained, **stage))
                else:
                    outs.append(run_external(settings, folder, service=service, adapter=adapter, baseline=baseline,
                                             limit=limit, **stage))
    finally:
        service.close()
    if as_json:
        console.print_json(json.dumps([o.to_json() for o in outs] if external is not None else outs[0].to_json()))
        return
    for out in outs:
        _print_run(out)


def _print_run(out: dict) -> None:
    s, b = out.summary, out.baseline_summary
    table = Table(title=f"eval {out.run_id}: {out.adapter} on {out.set.name} ({out.set.evaluated} items)")
    table.add_column("metric")
    table.add_column(out.adapter)
    if b:
        table.add_column(out.baseline)
    from eval.report import METRICS

    for key, _, _ in METRICS:
        if s.get(key) is None and not (b and b.get(key) is not None):
            continue
        table.add_row(key, str(s.get(key)), *( [str(b.get(key))] if b else []))
    console.print(table)
    console.print(f"saved under data/eval/runs/{out.run_id}; `policyrag report` writes the HTML and PDF")


def report_command(
    run: Annotated[str | None, typer.Option(help="run id (default: the latest)")] = None,
    pdf: Annotated[bool, typer.Option(help="also print the PDF (headless Chromium)")] = True,
) -> None:
    """The eval report for legal: a self-contained HTML file and a PDF."""
    from eval.report import write_report

    html_path, pdf_path = write_report(get_settings(), run, pdf=pdf)
    console.print(f"report: {html_path}" + (f"\n        {pdf_path}" if pdf_path else ""))


def curve_bundle_command(
    out: Annotated[Path, typer.Argument(help="the bundle folder to write")],
    run: Annotated[str | None, typer.Option(help="the eval run whose gold items are measured (default: the latest)")] = None,
    dataset: Annotated[Path | None, typer.Option(help="dataset folder (default: the latest built)")] = None,
) -> None:
    """What `python -m tuning.curve` needs to train and draw the learning curve on another machine
    (a GPU one): encoded pairs, status prompts of held-out pairs and gold items, the base's digest."""
    from eval.curve_bundle import bundle_from_run

    with err_console.status("encoding the pairs and the status prompts"):
        summary = bundle_from_run(get_settings(), run, out, dataset=dataset)
    console.print_json(json.dumps(summary))


def checklist_command(
    adapter: Annotated[str | None, typer.Option(help="adapter version (default: the promoted one)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The production checklist for an adapter, checked from the real artifacts; exits 1 on any ✗."""
    from eval.checklist import run_checklist

    version, checks = run_checklist(get_settings(), adapter)
    if as_json:
        console.print_json(json.dumps({"adapter": version, "ok": all(c.ok for c in checks),
                                       "checks": [c.__dict__ for c in checks]}))
    else:
        console.print(f"[bold]production checklist for adapter {version or '–'}[/]")
        for c in checks:
            console.print(f"{'[green]✓[/]' if c.ok else '[red]✗[/]'} {c.name}: {c.evidence}", soft_wrap=True, highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@review_app.command("export")
def review_export(run: Annotated[str | None, typer.Option(help="run id (default: the latest)")] = None) -> None:
    """Write the run's edge cases as a review sheet (CSV to fill in, HTML to read)."""
    from eval.review import export_review

    csv_path, html_path, n = export_review(get_settings(), run)
    console.print(f"{n} items to review:\n  {csv_path}\n  {html_path}")


@review_app.command("import")
def review_import(sheet: Annotated[Path, typer.Argument(help="the filled-in review CSV")]) -> None:
    """Read reviewers' verdicts (ok / wrong / unsure, finding, reviewer) back into the run."""
    from eval.review import import_review

    status = import_review(get_settings(), sheet)
    console.print(f"run {status['run_id']}: {status['reviewed']}/{status['items']} reviewed, "
                  f"{status['wrong']} judged wrong ({'complete' if status['complete'] else 'incomplete'})")


@bench_app.command("ingest")
def bench_ingest(
    docs: Annotated[int, typer.Option(help="synthetic documents")] = 1000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Full-pipeline throughput, unchanged re-ingest and one-changed-document cost."""
    from eval.bench_ingest import print_results, run_ingest_benchmark

    results = run_ingest_benchmark(docs=docs, console=err_console)
    if as_json:
        console.print_json(json.dumps(results))
    else:
        print_results(results, console)


@bench_app.command("retrieval")
def bench_retrieval(
    sizes: Annotated[str, typer.Option(help="comma-separated chunk counts")] = "10000,100000",
    queries: Annotated[int, typer.Option(help="queries per store and filter")] = 50,
    slow_queries: Annotated[int, typer.Option(help="queries for the slow local-mode baseline")] = 10,
    quality: Annotated[bool, typer.Option(help="also run the external quality sets")] = True,
    sets: Annotated[Path | None, typer.Option(help="folder of external sets")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Filtered top-10 latency/recall vs llama-index+local mode and Chroma; external quality."""
    from eval.bench_retrieval import print_retrieval_results, run_retrieval_benchmark
    from eval.bench_retrieval_quality import (
        DEFAULT_SETS,
        print_quality_results,
        run_quality_benchmark,
    )

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    results = {
        "latency_recall": run_retrieval_benchmark(
            sizes=tuple(int(s) for s in sizes.split(",") if s.strip()),
            queries=queries,
            slow_queries=slow_queries,
            console=err_console,
        )
    }
    if quality:
        results["quality"] = run_quality_benchmark(sets or DEFAULT_SETS, console=err_console)
    if as_json:
        console.print_json(json.dumps(results))
        return
    print_retrieval_results(results["latency_recall"], console)
    if quality:
        print_quality_results(results["quality"], console)


@bench_app.command("tuning")
def bench_tuning(
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps per trainer")] = 12,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    repeats: Annotated[int, typer.Option(min=1, help="alternating runs of each trainer")] = 1,
    dataset: Annotated[Path | None, typer.Option(help="dataset folder (default: the latest)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Training tokens/s and peak memory: our loop vs HF Trainer + PEFT, same data and steps."""
    from eval.bench_tuning import print_tuning_results, run_tuning_benchmark

    results = run_tuning_benchmark(steps=steps, batch_size=batch_size, repeats=repeats,
                                   dataset=dataset, console=err_console)
    if as_json:
        console.print_json(json.dumps(results))
    else:
        print_tuning_results(results, console)


@bench_app.command("answer")
def bench_answer(
    backend: Annotated[list[str] | None, typer.Option(
        help="vllm (the promoted adapter merged), vllm-lora (run-time LoRA) and/or local (default: vllm, vllm-lora, local)")] = None,
    single: Annotated[int, typer.Option(min=1, help="sequential requests of one user")] = 6,
    users: Annotated[int, typer.Option(min=1, help="concurrent users")] = 8,
    rounds: Annotated[int, typer.Option(min=1, help="requests per concurrent user")] = 2,
    ttft: Annotated[int, typer.Option(min=1, help="streamed chats timed to the first token")] = 3,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """End-to-end latency, throughput and time to first token: vLLM vs local backend, one run."""
    from eval.bench_answer import BACKENDS, print_answer_results, run_answer_benchmark

    backends = tuple(backend or BACKENDS)
    check_backends(*(b.removesuffix("-lora") for b in backends))
    out = run_answer_benchmark(get_settings(), backends=backends, single=single, users=users, rounds=rounds,
                               ttft=ttft, console=err_console)
    if as_json:
        console.print_json(json.dumps(out))
    else:
        print_answer_results(out, console)


@bench_app.command("decode")
def bench_decode(
    adapter: Annotated[str | None, typer.Option(help="adapter version (default: the promoted one)")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="passes over the benchmark's questions")] = 2,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Decode speed of the base model, the adapter through run-time LoRA and the adapter merged, one run."""
    from eval.bench_decode import print_decode_results, run_decode_benchmark

    out = run_decode_benchmark(get_settings(), adapter_version=adapter, repeats=repeats, console=err_console)
    if as_json:
        console.print_json(json.dumps(out))
    else:
        print_decode_results(out, console)
