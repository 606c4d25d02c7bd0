"""`policyrag up` (what `make run` runs): from a checkout to a served, tuned, evaluated assistant.

Steps, each reusing what is already there:
1. provision the models offline from their packages (converted once, then cached);
2. ingest `policies/` (only what changed);
3. decide what to serve (`plan`): the promoted adapter; else the newest registered adapter
   (evaluated first if it has no complete eval on the locked set, promoted if the gate passes);
   else build training data and train one (the ETA is printed before it starts);
4. start the vLLM server (or the local backend) and the answer service, print the chat page's URL
   and a ready-to-paste `curl` for the HR endpoint with a demo key.
Ctrl-C stops everything it started (the vLLM server is the service's child and stops with it).
A second run finds everything in place and is serving as soon as the model server is up.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from core.settings import Settings
from core.terminal import console, err_console


@dataclass(frozen=True)
class Plan:
    action: str  # serve | evaluate | promote | base | train
    version: str | None
    why: str


def plan(settings: Settings) -> Plan:
    from core.digest import sha256_file
    from eval.gate import run_failures
    from eval.runner import latest_complete_run
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(settings.adapters_dir)
    promoted = registry.promoted_version()
    if promoted:
        return Plan("serve", promoted, f"adapter {promoted} is promoted")
    versions = registry.versions()
    if not versions:
        return Plan("train", None, "no adapter is registered")
    newest = versions[-1]
    run = latest_complete_run(settings, newest, sha256_file(settings.gold_set_file))
    if run is None:
        return Plan("evaluate", newest, f"adapter {newest} has no complete eval on the locked set")
    failures = run_failures(settings, run, None)
    if failures:
        return Plan("base", newest, f"adapter {newest} failed the gate in run {run.run_id}: " + "; ".join(failures))
    return Plan("promote", newest, f"adapter {newest} passed the gate in run {run.run_id}")


def training_eta_s(settings: Settings, config) -> float:
    """A rough upper bound for data building + training + eval on this machine (2 CPU cores)."""
    from eval.gold import load_gold_set

    items = len(load_gold_set(settings.gold_set_file).items)
    build = 150.0
    train = (config.time_budget_s or 1200.0) + 60.0 * (1 + config.compare_items / 6)
    evaluate = items * (2.5 if settings.answer_backend == "vllm" else 6.0)  # measured: 286 items in ~12-15 min on vLLM
    return build + train + evaluate


def _eval_with_progress(settings: Settings, service, version: str) -> dict:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from eval.gold import load_gold_set
    from eval.runner import run_eval

    total = len(load_gold_set(settings.gold_set_file).items)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console) as progress:
        task = progress.add_task(f"eval {version}", total=total)
        return run_eval(settings, service=service, adapter=version,
                        on_stage=lambda text: progress.update(task, description=f"eval {text}"),
                        on_item=lambda row: progress.advance(task))


def demo_curl(settings: Settings, base_url: str) -> str:
    from retrieval.directory import load_directory

    key = next((u.api_key for u in load_directory(settings.directory_file).users.values() if u.api_key), None)
    auth = f"Bearer {key}" if key else "Bearer $POLICYRAG_API_KEY"
    body = '{"question": "How many days of annual leave can I carry over?"}'
    return (f"curl -s {base_url}/v1/hr/answer -H {shlex.quote('Authorization: ' + auth)} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")


def up(settings: Settings, *, host: str, port: int) -> None:
    from answer.app import build_service, run_service
    from core.provision import embedding_model_path, provision_base_model
    from eval.gate import gated_promote
    from ingest.cli import ingest_with_progress
    from ingest.pipeline import Ingestor
    from tuning.cli import train_with_progress
    from tuning.registry import AdapterRegistry, PromotionRefused

    started = time.perf_counter()
    step = lambda text: err_console.print(f"[bold cyan]›[/] {text}", highlight=False)  # noqa: E731

    step("models: provisioning offline from their packages")
    embedding_model_path(settings)
    base = provision_base_model(settings)
    step(f"models: {base.name} ready")

    with Ingestor(settings) as ingestor:
        report = ingest_with_progress(ingestor, settings.corpus_dir, [], quiet=False)
    step(f"ingest: {len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
         f"{len(report.deleted)} deleted, {len(report.rejected)} rejected (see `policyrag ingest` for details)")

    decision = plan(settings)
    step(f"adapter: {decision.why}")
    version = decision.version
    if decision.action == "train":
        from tuning.build import build_training_data
        from tuning.config import TrainConfig

        config = TrainConfig()
        eta = training_eta_s(settings, config)
        budget = f"within {config.time_budget_s:.0f} s" if config.time_budget_s else f"{config.max_steps} steps"
        step(f"training an adapter: about {eta / 60:.0f} minutes on this machine (data, training {budget}, "
             "then the eval); Ctrl-C stops it and nothing half-made is kept")
        with err_console.status("building training data") as status:
            build_training_data(settings, on_stage=status.update)
        version = train_with_progress(settings, config, AdapterRegistry(settings.adapters_dir)).version
        step(f"adapter {version} trained and registered")

    with err_console.status("starting the answer service") as status:
        service = build_service(settings, on_stage=status.update)
    try:
        if decision.action in ("train", "evaluate"):
            out = _eval_with_progress(settings, service, version)
            step(f"eval of {version}: run {out.run_id} (`policyrag report` writes it up for legal)")
        if decision.action in ("train", "evaluate", "promote"):
            try:
                gated_promote(settings, version, reason="policyrag up")
                step(f"[green]adapter {version} promoted[/] (the gate passed)")
            except PromotionRefused as exc:
                step(f"[yellow]not promoted[/]: {exc}")
        live = AdapterRegistry(settings.adapters_dir).promoted_version()
        if live is None:
            step("[yellow]serving the base model without an adapter[/]: no adapter passed the gate "
                 "(`policyrag adapters promote V --force --reason ...` overrides it, recorded)")
        base_url = f"http://{host}:{port}"
        console.print(f"\n[green]ready[/] in {time.perf_counter() - started:.0f} s — adapter {live or 'none (base model)'}, "
                      f"backend {service.backend.name}\n  chat page:  {base_url}/\n  API docs:   {base_url}/docs\n"
                      f"  HR endpoint:\n    {demo_curl(settings, base_url)}\n  Ctrl-C stops everything.\n",
                      highlight=False, soft_wrap=True)
        run_service(service, host, port)
    finally:
        service.close()
        err_console.print("stopped: the answer service and the model server it started")
