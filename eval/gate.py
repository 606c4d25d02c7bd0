"""The promotion gate: `policyrag adapters promote V` refuses unless V's eval on the current
locked eval set exists and meets the thresholds in settings. `gated_promote` hands it to the
registry as its `gate` and records the promotion."""

from __future__ import annotations

from typing import Any

from core.digest import sha256_file
from core.settings import Settings
from eval.eval_run import EvalRun
from eval.metrics import COMPARED
from eval.runner import latest_complete_run


def gate_failures(settings: Settings, version: str, promoted: str | None) -> list[str]:
    """Why `version` may not be promoted (empty: it may)."""
    if not settings.gold_set_file.exists():
        return [f"no eval set at {settings.gold_set_file}: nothing to gate on"]
    set_hash = sha256_file(settings.gold_set_file)
    run = latest_complete_run(settings, version, set_hash)
    if run is None:
        return [f"no complete eval of {version} on the current eval set ({set_hash[:12]}); run `policyrag eval --adapter {version}`"]
    return run_failures(settings, run, promoted)


def run_failures(settings: Settings, run: EvalRun, promoted: str | None) -> list[str]:
    """The gate applied to one saved run: its thresholds, the comparison with the promoted
    adapter's latest complete run on the same set, and the review when required."""
    from eval.review import review_status

    current = None
    if promoted and promoted != run.adapter:
        current = latest_complete_run(settings, promoted, run.set.hash)
    failures = summary_failures(settings, run.summary, current.summary if current else None, promoted)
    if settings.gate_require_review:
        status = review_status(settings, run.run_id)
        if not status["complete"]:
            failures.append(f"human review of run {run.run_id} is not complete ({status['reviewed']}/{status['items']} items)")
    return failures


def summary_failures(settings: Settings, s: dict[str, Any], current: dict[str, Any] | None,
                     promoted: str | None) -> list[str]:
    """The thresholds applied to one run's summary (and the promoted adapter's, to compare)."""
    failures = []
    if s["schema_validity"] is None or s["schema_validity"] < settings.gate_min_schema_validity:
        failures.append(f"schema validity {s['schema_validity']} < {settings.gate_min_schema_validity}")
    if s["acl_leaks"] > settings.gate_max_acl_leaks:
        failures.append(f"ACL leakage: {s['acl_leaks']} responses leak restricted text (allowed {settings.gate_max_acl_leaks})")
    if s["refusal_recall"] is None or s["refusal_recall"] < settings.gate_min_refusal_recall:
        failures.append(f"refusal recall {s['refusal_recall']} < {settings.gate_min_refusal_recall}")
    if s["status_accuracy"] is None or s["status_accuracy"] < settings.gate_min_status_accuracy:
        failures.append(f"status accuracy {s['status_accuracy']} < {settings.gate_min_status_accuracy} "
                        "(answered/refused/escalate right)")
    if current is not None:
        for metric in COMPARED:
            new, old = s.get(metric), current.get(metric)
            if new is not None and old is not None and new < old - settings.gate_max_regression:
                failures.append(f"{metric} {new} is worse than promoted {promoted}'s {old} by more than {settings.gate_max_regression}")
    return failures


def gated_promote(settings: Settings, version: str, *, force: bool = False, reason: str | None = None):
    """Promote through the eval gate; the promotion (forced or not) goes to the registry's event
    log and to the audit log. Returns the promoted record and the gate failures a force overrode."""
    import getpass

    from answer.audit import AuditLog, operator_record
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(settings.adapters_dir)
    current = registry.promoted_version()
    seen: list[str] = []

    def gate(record) -> list[str]:
        seen[:] = gate_failures(settings, record.version, current)
        return seen

    record = registry.promote(version, force=force, reason=reason, gate=gate)
    AuditLog.from_settings(settings).append(operator_record(
        endpoint="adapters promote", user=getpass.getuser(), action="promote", version=version,
        previous=current, forced=bool(force and seen), gate_failures=seen, reason=reason,
    ))
    return record, seen
