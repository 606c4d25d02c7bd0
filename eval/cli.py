"""`policyrag eval`, `policyrag report`, `policyrag review export|import` (registered on the root
app in ingest/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ingest.errors import PolicyRagError
from ingest.settings import get_settings
from ingest.terminal import console, err_console
from ingest.terminal import fail as _fail

review_app = typer.Typer(help="Human review of an eval run's edge cases.", no_args_is_help=True)



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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from answer.service import build_service
    from eval.gold import load_gold_set
    from eval.runner import run_eval

    from answer.cli import settings_for_backend

    settings = settings_for_backend(backend)
    try:
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
    except PolicyRagError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(outs if external is not None else outs[0]))
        return
    for out in outs:
        _print_run(out)


def _print_run(out: dict) -> None:
    s, b = out["summary"], out.get("baseline_summary")
    table = Table(title=f"eval {out['run_id']}: {out['adapter']} on {out['set']['name']} ({out['set']['evaluated']} items)")
    table.add_column("metric")
    table.add_column(out["adapter"])
    if b:
        table.add_column(out["baseline"])
    from eval.report import METRICS

    for key, _, _ in METRICS:
        if s.get(key) is None and not (b and b.get(key) is not None):
            continue
        table.add_row(key, str(s.get(key)), *( [str(b.get(key))] if b else []))
    console.print(table)
    console.print(f"saved under data/eval/runs/{out['run_id']}; `policyrag report` writes the HTML and PDF")


def report_command(
    run: Annotated[str | None, typer.Option(help="run id (default: the latest)")] = None,
    pdf: Annotated[bool, typer.Option(help="also print the PDF (headless Chromium)")] = True,
) -> None:
    """The eval report for legal: a self-contained HTML file and a PDF."""
    from eval.report import write_report

    try:
        html_path, pdf_path = write_report(get_settings(), run, pdf=pdf)
    except PolicyRagError as exc:
        _fail(exc)
    console.print(f"report: {html_path}" + (f"\n        {pdf_path}" if pdf_path else ""))


def checklist_command(
    adapter: Annotated[str | None, typer.Option(help="adapter version (default: the promoted one)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The production checklist for an adapter, checked from the real artifacts; exits 1 on any ✗."""
    from eval.checklist import run_checklist

    try:
        version, checks = run_checklist(get_settings(), adapter)
    except PolicyRagError as exc:
        _fail(exc)
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

    try:
        csv_path, html_path, n = export_review(get_settings(), run)
    except PolicyRagError as exc:
        _fail(exc)
    console.print(f"{n} items to review:\n  {csv_path}\n  {html_path}")


@review_app.command("import")
def review_import(sheet: Annotated[Path, typer.Argument(help="the filled-in review CSV")]) -> None:
    """Read reviewers' verdicts (ok / wrong / unsure, finding, reviewer) back into the run."""
    from eval.review import import_review

    try:
        status = import_review(get_settings(), sheet)
    except PolicyRagError as exc:
        _fail(exc)
    console.print(f"run {status['run_id']}: {status['reviewed']}/{status['items']} reviewed, "
                  f"{status['wrong']} judged wrong ({'complete' if status['complete'] else 'incomplete'})")
