"""`policyrag checklist`: the production checklist a team signs before shipping an adapter,
checked from the real artifacts (eval runs, the training dataset, the registry's event log,
benchmark results, review sheets, the shipped alert rules). Each line is ✓ or ✗ with its
evidence; any ✗ makes the command exit non-zero.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.digest import sha256_file
from core.settings import PROJECT_ROOT, Settings
from eval.eval_run import EvalRun
from tuning.registry import AdapterManifest

ALERT_RULES = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"
GOLD_README = "README.md"  # beside the gold set: it states the locked hash
# what the alert rules must watch: (what, a series the rule must select)
REQUIRED_ALERTS = (
    ("error rate", "policyrag_requests_total"),
    ("p95 latency", "policyrag_request_seconds_bucket"),
    ("refusal-rate spike", "policyrag_refusals_total"),
    ("citation-verification failures", "policyrag_citation_repairs_total"),
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    evidence: str


def metric_names_in(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords, labels removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    names = set()
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if match.group(2) or match.group(1) in {"and", "or", "unless", "bool"}:
            continue  # a function call, or a binary keyword
        names.add(match.group(1))
    return names


def exported_series() -> set[str]:
    """Series names the answer service's registry exposes, with prometheus_client's suffixes."""
    from answer.metrics import Metrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("", "_count", "_sum", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


# -- the checks ----------------------------------------------------------------------------------


def _schema_and_gate(settings: Settings, version: str, run: EvalRun | None, promoted: str | None) -> list[Check]:
    from eval.gate import run_failures

    if run is None:
        missing = f"no complete eval of {version} on the current eval set; run `policyrag eval --adapter {version}`"
        return [Check("schema validation passes", False, missing), Check("eval gate passes", False, missing)]
    s = run.summary
    schema_ok = s["schema_validity"] is not None and s["schema_validity"] >= settings.gate_min_schema_validity
    failures = run_failures(settings, run, promoted)
    return [
        Check("schema validation passes", schema_ok,
              f"run {run.run_id}: {s['schema_validity']:.1%} of {s['items']} answers valid under constrained decoding "
              f"(need ≥ {settings.gate_min_schema_validity:.0%})"),
        Check("eval gate passes", not failures,
              f"run {run.run_id}: " + ("; ".join(failures) if failures else "every threshold met")),
    ]


def _pii(settings: Settings, manifest: AdapterManifest) -> Check:
    """The dataset the adapter was trained on: PII scrubbing ran at build time, and a fresh scan
    of what people wrote (questions and answers) finds nothing left."""
    from ingest.pii import PiiScrubber

    folder = Path(manifest.dataset_path or "")
    pairs, report = folder / "pairs.jsonl", folder / "report.json"
    if not pairs.exists() or not report.exists():
        return Check("PII removed from the training data", False,
                     f"the adapter's dataset {folder} is missing (pairs.jsonl and report.json); rebuild it with `policyrag tune build-data`")
    built = json.loads(report.read_text())
    if "pii_replacements" not in built:
        return Check("PII removed from the training data", False, f"{report} does not record a PII scrub")
    scrubber = PiiScrubber.from_settings(settings)
    found: dict[str, int] = {}
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        answer = json.loads(row["response"]).get("answer") or ""
        for text in (row["instruction"], answer):
            for entity, n in scrubber.scrub(text)[1].counts.items():
                found[entity] = found.get(entity, 0) + n
    total = sum(found.values())
    return Check("PII removed from the training data", total == 0,
                 f"dataset {built.get('dataset_hash', '')[:12]}: {len(rows)} pairs; {built['pii_replacements']} replaced at build; "
                 f"re-scan of questions and answers finds {total}" + (f" ({found})" if found else ""))


def _eval_set_locked(settings: Settings, run: EvalRun | None) -> Check:
    current = sha256_file(settings.gold_set_file)
    readme = settings.gold_set_file.parent / GOLD_README
    stated = re.findall(r"\b[0-9a-f]{64}\b", readme.read_text()) if readme.exists() else []
    problems = []
    if current not in stated:
        problems.append(f"the hash is not the one stated in {readme} ({stated[0][:12] if stated else 'none'}…): "
                        "the set changed without its lock record; review the change and update both")
    if run is not None and run.set.hash != current:
        problems.append(f"the adapter's eval ran on {run.set.hash[:12]}…")
    return Check("eval set locked (hash unchanged)", not problems,
                 f"{settings.gold_set_file.name} sha256 {current[:12]}…" + ("; " + "; ".join(problems) if problems else
                                                                           f", as stated in {readme.name}"))


def _rollback(version: str, events: list[dict[str, Any]], registered_at: str) -> Check:
    drills = [e for e in events if e.get("action") == "drill" and e.get("version") == version and e["at"] >= registered_at]
    passed = [e for e in drills if e.get("ok")]
    if passed:
        e = passed[-1]
        return Check("rollback tested", True, f"drill at {e['at']}: {version} → {e['rolled_back_to']} → {version}, "
                                               f"each step served by the expected adapter ({e['seconds']} s)")
    why = f"the last drill of {version} failed at {drills[-1]['at']}" if drills else f"no rollback drill of {version}"
    return Check("rollback tested", False, why + "; run `policyrag adapters drill`")


def _latency(settings: Settings, version: str, now: dt.datetime) -> Check:
    folder = settings.data_dir / "bench"
    results = []
    for path in sorted(folder.glob("answer-*.json")) if folder.exists() else []:
        data = json.loads(path.read_text())
        if data.get("summary", {}).get("adapter") == version:
            results.append((path, data))
    if not results:
        return Check("latency measured under load", False, f"no answer benchmark of {version} in {folder}; run `policyrag bench answer`")
    path, data = results[-1]
    age = now - dt.datetime.fromisoformat(data["at"])
    loaded = {name: r for name, r in data["results"].items() if r.get("concurrent", {}).get("users", 0) >= 2}
    fresh = age <= dt.timedelta(days=settings.checklist_max_bench_age_days)
    if not loaded:
        return Check("latency measured under load", False, f"{path.name} has no concurrent-users measurement")
    name, r = next(iter(loaded.items()))
    return Check("latency measured under load", fresh,
                 f"{path.name} ({age.days} days old{'' if fresh else f', older than {settings.checklist_max_bench_age_days}'}): "
                 f"{name}, single p50 {r['single']['p50_s']} s / p95 {r['single']['p95_s']} s; "
                 f"{r['concurrent']['users']} users p95 {r['concurrent']['p95_s']} s, {r['concurrent']['answers_per_s']} answers/s")


def _review(settings: Settings, run: EvalRun | None) -> Check:
    from eval.review import review_status

    if run is None:
        return Check("human review done", False, "no eval run to review")
    status = review_status(settings, run.run_id)
    if not status["items"]:
        return Check("human review done", False, f"no review sheet for run {run.run_id}; run `policyrag review export`")
    return Check("human review done", bool(status["complete"]),
                 f"run {run.run_id}: {status['reviewed']}/{status['items']} flagged items reviewed, {status['wrong']} judged wrong")


def _alerts(path: Path) -> Check:
    if not path.exists():
        return Check("monitoring alerts defined", False, f"{path} is missing")
    try:
        rules = [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        return Check("monitoring alerts defined", False, f"{path} is not a Prometheus rules file ({exc})")
    selected = {rule["alert"]: metric_names_in(rule["expr"]) for rule in rules if "alert" in rule}
    missing = [what for what, series in REQUIRED_ALERTS if not any(series in names for names in selected.values())]
    exported = exported_series()
    unknown = sorted({n for names in selected.values() for n in names
                      if n.startswith("policyrag_") and n not in exported})
    problems = ([f"no alert on {', '.join(missing)}"] if missing else []) + (
        [f"series the service does not export: {', '.join(unknown)}"] if unknown else [])
    return Check("monitoring alerts defined", not problems,
                 f"{path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}: {len(selected)} alerts"
                 + ("; " + "; ".join(problems) if problems else
                    " covering error rate, p95 latency, refusal-rate spikes and citation-verification failures"))


def run_checklist(settings: Settings, version: str | None = None, *, alert_rules: Path = ALERT_RULES,
                  now: dt.datetime | None = None) -> tuple[str | None, list[Check]]:
    from eval.runner import latest_complete_run
    from tuning.registry import AdapterRegistry, RegistryError

    now = now or dt.datetime.now(dt.timezone.utc)
    registry = AdapterRegistry(settings.adapters_dir)
    promoted = registry.promoted_version()
    version = version or promoted
    if version is None:
        return None, [Check("an adapter to ship", False, "no adapter is promoted and none was named; pass --adapter V")]
    try:
        record = registry.load(version)
    except RegistryError as exc:
        return version, [Check("an adapter to ship", False, str(exc))]
    run = latest_complete_run(settings, version, sha256_file(settings.gold_set_file)) if settings.gold_set_file.exists() else None
    return version, [
        *_schema_and_gate(settings, version, run, promoted),
        _pii(settings, record.manifest),
        _eval_set_locked(settings, run),
        _rollback(version, registry.events(), record.manifest.created_at),
        _latency(settings, version, now),
        _review(settings, run),
        _alerts(alert_rules),
    ]
