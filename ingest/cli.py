"""The `policyrag` command line (typer + rich). Each stage adds its own sub-commands here."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ingest.errors import ConfigError, PolicyRagError
from ingest.settings import get_settings
from ingest.terminal import console, err_console, print_error
from ingest.terminal import fail as _fail

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="policyrag",
    help="Answers questions about a company's own policies: cited, access-controlled.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Offline model provisioning.", no_args_is_help=True)
app.add_typer(models_app, name="models")
bench_app = typer.Typer(help="Benchmarks, each against its baseline in one run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


from tuning.cli import adapters_app, tune_app  # noqa: E402  (each stage owns its sub-commands)

app.add_typer(tune_app, name="tune")
app.add_typer(adapters_app, name="adapters")

from answer.cli import ask, audit, keys_app, serve, up_command  # noqa: E402

app.command("serve")(serve)
app.command("up")(up_command)
app.command("ask")(ask)
app.command("audit")(audit)
app.add_typer(keys_app, name="keys")

from eval.cli import checklist_command, eval_command, report_command, review_app  # noqa: E402

app.command("eval")(eval_command)
app.command("report")(report_command)
app.command("checklist")(checklist_command)
app.add_typer(review_app, name="review")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # bitsandbytes warns on import that an optional GPU-kernel hub package is absent; 4-bit NF4
    # works without it on this CPU
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@app.command()
def ingest(
    path: Annotated[Path | None, typer.Argument(help="folder of policy documents")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="keep following the folder")] = False,
    default_groups: Annotated[
        str | None,
        typer.Option(help="G1,G2: groups for documents that have no `groups` metadata"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Index a folder of policies into the store (only what changed)."""
    from ingest.pipeline import Ingestor

    settings = get_settings()
    root = (path or settings.corpus_dir).resolve()
    groups = [g for g in (default_groups or "").split(",") if g.strip()]
    try:
        with Ingestor(settings) as ingestor:
            if watch:
                from ingest.watch import watch_folder

                console.print(f"watching [bold]{root}[/] (Ctrl-C to stop)")
                try:
                    watch_folder(
                        ingestor,
                        root,
                        lambda r: _print_report(r, as_json),
                        default_groups=groups,
                    )
                except KeyboardInterrupt:
                    pass
                return
            report = _run_with_progress(ingestor, root, groups, quiet=as_json)
    except PolicyRagError as exc:
        _fail(exc)
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


def _run_with_progress(ingestor, root: Path, groups: list[str], *, quiet: bool):
    with Progress(
        TextColumn("[bold]ingest[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def on_progress(done: int, total: int, doc: str) -> None:
            bar.update(task, completed=done, total=total or 1, description=doc)

        return ingestor.run(root, default_groups=groups, progress=on_progress)


def _print_report(report, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
        return
    table = Table(title="ingest summary", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in (
        ("added", len(report.added)),
        ("updated", len(report.updated)),
        ("deleted", len(report.deleted)),
        ("superseded", len(report.superseded)),
        ("unchanged", len(report.unchanged)),
        ("rejected", len(report.rejected)),
        ("chunks written", report.chunks_written),
        ("chunks removed", report.chunks_deleted),
        ("PII redactions", report.pii_total),
        ("seconds", f"{report.seconds:.1f}"),
    ):
        table.add_row(label, str(value))
    console.print(table)
    if report.pii_total:
        pii = Table(title="PII scrubbed per document", show_header=True)
        pii.add_column("document")
        pii.add_column("redactions")
        for doc, counts in sorted(report.pii.items()):
            if counts:
                pii.add_row(doc, ", ".join(f"{k} {v}" for k, v in counts.items()))
        console.print(pii)
    if report.recovered:
        console.print(f"[yellow]recovered from an interrupted run:[/] {', '.join(report.recovered)}")
    if report.rejected:
        rej = Table(title="rejected files", show_header=True, title_style="bold red")
        rej.add_column("file")
        rej.add_column("reason")
        rej.add_column("what to do")
        for r in report.rejected:
            rej.add_row(r.path, r.reason, r.message)
        err_console.print(rej)
        for r in report.rejected:  # one plain line each, for logs and grep
            err_console.print(f"rejected {r.path} ({r.reason}): {r.message}", soft_wrap=True, markup=False)


@app.command()
def search(
    question: Annotated[str, typer.Argument(help="the question or search terms")],
    as_user: Annotated[str, typer.Option("--as", help="user id from the directory")],
    k: Annotated[int, typer.Option("--k", min=1, max=50)] = 5,
    mode: Annotated[str, typer.Option(help="hybrid | dense | sparse")] = "hybrid",
    doc: Annotated[list[str] | None, typer.Option(help="only these document ids")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show exactly the passages USER would get for QUESTION."""
    from dataclasses import asdict

    from retrieval.acl import SearchFilters
    from retrieval.retriever import Retriever

    if mode not in ("hybrid", "dense", "sparse"):
        err_console.print(f"[bold red]error[/]: --mode {mode!r} is not one of hybrid, dense, sparse")
        raise typer.Exit(2)
    settings = get_settings()
    try:
        retriever = Retriever.from_settings(settings)
        try:
            passages = retriever.search(
                question, as_user, k=k, mode=mode,
                filters=SearchFilters(doc_ids=tuple(doc)) if doc else None,
            )
        finally:
            retriever.store.close()
    except PolicyRagError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(
            [{**asdict(p), "effective_date": p.effective_date.isoformat(), "label": p.label} for p in passages]
        ))
        return
    if not passages:
        console.print(f"no passage {as_user} may read is relevant enough (score floor "
                      f"{settings.retrieval_score_floor})")
        return
    table = Table(title=f"what {as_user} gets", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("citation")
    table.add_column("section")
    table.add_column("score", justify="right")
    table.add_column("text")
    for i, p in enumerate(passages, 1):
        rel = f"{p.score:.4f}" + (f"\ncos {p.relevance:.2f}" if p.relevance is not None else "")
        table.add_row(str(i), p.citation_id, p.label, rel, p.text[:300])
    console.print(table)


@models_app.command("provision")
def models_provision(
    force: Annotated[bool, typer.Option(help="convert again even if cached")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the embedding model and convert the base LM (once) into a safetensors folder."""
    from dataclasses import asdict

    from ingest.provision import embedding_model_path, provision_base_model

    settings = get_settings()
    try:
        emb = embedding_model_path(settings)
        info = provision_base_model(settings, force=force)
    except PolicyRagError as exc:
        _fail(exc)
    data = {"embedding_model": str(emb), "base_model": asdict(info)}
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(f"embedding model: {emb}")
        console.print(f"base model:      {info.path}  (source sha256 {info.source_sha256[:16]}…)")


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

    try:
        results = run_tuning_benchmark(steps=steps, batch_size=batch_size, repeats=repeats,
                                       dataset=dataset, console=err_console)
    except PolicyRagError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(results))
    else:
        print_tuning_results(results, console)


@bench_app.command("answer")
def bench_answer(
    backend: Annotated[list[str] | None, typer.Option(help="vllm and/or local (default: both)")] = None,
    single: Annotated[int, typer.Option(min=1, help="sequential requests of one user")] = 6,
    users: Annotated[int, typer.Option(min=1, help="concurrent users")] = 8,
    rounds: Annotated[int, typer.Option(min=1, help="requests per concurrent user")] = 2,
    ttft: Annotated[int, typer.Option(min=1, help="streamed chats timed to the first token")] = 3,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """End-to-end latency, throughput and time to first token: vLLM vs local backend, one run."""
    from eval.bench_answer import print_answer_results, run_answer_benchmark

    backends = tuple(backend or ("vllm", "local"))
    bad = [b for b in backends if b not in ("vllm", "local")]
    if bad:
        _fail(ConfigError(f"--backend must be vllm or local, got {', '.join(bad)}"))
    try:
        out = run_answer_benchmark(get_settings(), backends=backends, single=single, users=users, rounds=rounds,
                                   ttft=ttft, console=err_console)
    except PolicyRagError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(out))
    else:
        print_answer_results(out, console)


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except PolicyRagError as exc:
        print_error(exc)
        sys.exit(2)
