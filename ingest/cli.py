"""`policyrag ingest` (mounted on the root app in policyrag/cli.py)."""

from __future__ import annotations

import json
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

from core.settings import get_settings
from core.terminal import console, err_console


def ingest_command(
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
    with Ingestor(settings) as ingestor:
        if watch:
            from ingest.watch import watch_folder

            console.print(f"watching [bold]{root}[/] (Ctrl-C to stop)")
            try:
                watch_folder(ingestor, root, lambda r: _print_report(r, as_json), default_groups=groups)
            except KeyboardInterrupt:
                pass
            return
        report = ingest_with_progress(ingestor, root, groups, quiet=as_json)
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


def ingest_with_progress(ingestor, root: Path, groups: list[str], *, quiet: bool):
    """Ingestor.run with a progress bar on a terminal (also used by `policyrag up`)."""
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
