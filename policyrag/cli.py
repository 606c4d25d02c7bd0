"""The `policyrag` command line: the root app mounting each stage's commands, plus the commands
that join stages (`up`, `models provision`, `adapters promote` and `adapters drill`, which need
the eval gate above the registry).

Every `PolicyRagError` a command raises is printed once here as `error (code): message` and
exits 2; commands raise and never catch-and-print themselves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table
from typer.core import TyperGroup

from answer.cli import ask, audit, keys_app, serve
from core.errors import ConfigError, PolicyRagError
from core.settings import get_settings, settings_for_backend
from core.terminal import console, err_console, print_error
from eval.cli import (
    bench_app,
    checklist_command,
    curve_bundle_command,
    eval_command,
    report_command,
    review_app,
)
from ingest.cli import ingest_command
from retrieval.cli import search_command
from tuning.cli import adapters_app, print_change, tune_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _RootGroup(TyperGroup):
    """Prints a `PolicyRagError` from any command (at any depth) and exits 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PolicyRagError as exc:
            print_error(exc)
            raise typer.Exit(2) from None


@dataclass(frozen=True)
class RootContext:
    """What the roof hands down to stage commands that need a floor above them."""

    promote: Callable  # eval.gate.gated_promote, for `tune train --promote`


app = typer.Typer(
    name="policyrag",
    cls=_RootGroup,
    help="Answers questions about a company's own policies: cited, access-controlled.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Offline model provisioning.", no_args_is_help=True)

app.command("ingest")(ingest_command)
app.command("search")(search_command)
app.add_typer(tune_app, name="tune")
app.add_typer(adapters_app, name="adapters")
app.command("serve")(serve)
app.command("ask")(ask)
app.command("audit")(audit)
app.add_typer(keys_app, name="keys")
app.command("eval")(eval_command)
app.command("report")(report_command)
app.command("checklist")(checklist_command)
app.command("curve-bundle")(curve_bundle_command)
app.add_typer(review_app, name="review")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")


def _gated_promote(*args, **kwargs):
    from eval.gate import gated_promote  # imported on use: most commands never promote

    return gated_promote(*args, **kwargs)


@app.callback()
def _main(ctx: typer.Context, verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # bitsandbytes warns on import that an optional GPU-kernel hub package is absent; 4-bit NF4
    # works without it on this CPU
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    ctx.obj = RootContext(promote=_gated_promote)
    _close_data_dir()


def _close_data_dir() -> None:
    """A data folder made before files were written 0600 may be world-readable: closing its top
    level (0700) closes everything under it."""
    try:
        data_dir = get_settings().data_dir
    except PolicyRagError:
        return  # bad settings are reported by the command that needs them
    if data_dir.is_dir() and data_dir.stat().st_uid == os.getuid() and data_dir.stat().st_mode & 0o077:
        data_dir.chmod(0o700)


@app.command("up")
def up_command(
    host: Annotated[str | None, typer.Option(help="default: POLICYRAG_SERVICE_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: POLICYRAG_SERVICE_PORT")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm or local (default: POLICYRAG_ANSWER_BACKEND)")] = None,
) -> None:
    """Everything from a checkout to a served assistant: models, ingest, adapter (trained, evaluated and
    promoted through the gate if none is), vLLM and the answer service. Ctrl-C stops it all."""
    from answer.auth import check_bind
    from policyrag.up import up

    settings = settings_for_backend(backend)
    check_bind(settings, host or settings.service_host)  # before anything is provisioned or trained
    try:
        up(settings, host=host or settings.service_host, port=port or settings.service_port)
    except KeyboardInterrupt:
        err_console.print("interrupted: everything started was stopped; what finished is kept")
        raise typer.Exit(130) from None


@models_app.command("provision")
def models_provision(
    force: Annotated[bool, typer.Option(help="convert again even if cached")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the embedding model and convert the base LM (once) into a safetensors folder."""
    from dataclasses import asdict

    from core.provision import embedding_model_path, provision_base_model

    settings = get_settings()
    emb = embedding_model_path(settings)
    info = provision_base_model(settings, force=force)
    data = {"embedding_model": str(emb), "base_model": asdict(info)}
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(f"embedding model: {emb}")
        console.print(f"base model:      {info.path}  (source sha256 {info.source_sha256[:16]}…)")


@adapters_app.command("promote")
def adapters_promote(
    version: str,
    force: Annotated[bool, typer.Option(help="override a failing gate (recorded)")] = False,
    reason: Annotated[str | None, typer.Option(help="why; recorded with the promotion")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make VERSION the live adapter, if its eval on the locked set passes the gate."""
    from eval.gate import gated_promote

    if force and not reason:
        raise ConfigError("--force needs --reason: say why the gate is overridden (it is recorded)")
    record, failures = gated_promote(get_settings(), version, force=force, reason=reason)
    if failures:
        err_console.print("[yellow]gate overridden (--force):[/] " + "; ".join(failures), soft_wrap=True)
    print_change("promoted", record.version, as_json)


@adapters_app.command("drill")
def adapters_drill(
    user: Annotated[str | None, typer.Option(help="who asks the drill question (default: the directory's first user)")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm or local (default: local: the drill needs no server)")] = "local",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rollback drill: answer with the live adapter, roll back, answer, restore, answer (recorded)."""
    from answer.app import build_service
    from eval.drill import rollback_drill

    with err_console.status("starting the answer pipeline") as status:
        service = build_service(settings_for_backend(backend), on_stage=status.update)
    try:
        outcome = rollback_drill(service, user=user)
    finally:
        service.close()
    if as_json:
        console.print_json(json.dumps(outcome))
    else:
        table = Table(title=f"rollback drill: {outcome['version']} → {outcome['rolled_back_to']} → {outcome['version']}")
        for column in ("step", "expected", "served", "status", "seconds", "ok"):
            table.add_column(column)
        for s in outcome["steps"]:
            table.add_row(s["step"], s["expected"], str(s["served"]), s["status"], str(s["seconds"]), "✓" if s["ok"] else "✗")
        console.print(table)
        console.print(("[green]drill passed[/]" if outcome["ok"] else f"[red]drill failed[/] {outcome.get('problem', '')}")
                      + " (recorded in the adapter registry)")
    if not outcome["ok"]:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    # everything this process writes under the data folder (index, manifest, audit, eval runs,
    # adapters) is the owner's alone: 0600 files, 0700 folders
    os.umask(0o077)
    try:
        app()
    except PolicyRagError as exc:  # raised outside a command (e.g. while parsing settings)
        print_error(exc)
        sys.exit(2)
