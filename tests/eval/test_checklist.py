"""The rollback drill (through the real answer pipeline) and `policyrag checklist`, each line
checked against real artifacts: ✓ when the evidence is there, ✗ with the reason when it is not."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from core.errors import ConfigError
from core.settings import Settings, get_settings
from eval.checklist import ALERT_RULES, run_checklist
from tests.answer.helpers import CARRY_OVER, copy_data, register_copy


def write_dataset(folder: Path, instructions: list[str]) -> Path:
    folder.mkdir(parents=True)
    answer = json.dumps({"status": "answered", "answer": "Up to 5 days.", "citations": [], "reason": None})
    folder.joinpath("pairs.jsonl").write_text("".join(
        json.dumps({"id": f"p{n}", "instruction": q, "response": answer}) + "\n" for n, q in enumerate(instructions)))
    folder.joinpath("report.json").write_text(json.dumps({"dataset_hash": "d" * 64, "pii_replacements": 3}))
    return folder


@pytest.fixture(scope="module")
def drilled(answer_data, local_backend, embedder, tmp_path_factory):
    """v1 (promoted by the fixture), then v2 promoted on top of it, then a drill of v2."""
    from answer.app import build_service
    from eval.drill import rollback_drill
    from tuning.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("checklist")
    data = copy_data(answer_data, root / "data")
    dataset = write_dataset(root / "dataset", ["How much annual leave can I carry over?", "Who approves expenses?"])
    version = register_copy(data, dataset_path=str(dataset))
    registry = AdapterRegistry(data / "adapters")
    registry.promote(version, force=True, reason="test setup")
    settings = Settings(data_dir=data)
    service = build_service(settings, backend=local_backend, embedder=embedder)
    try:
        outcome = rollback_drill(service, user="alice", question=CARRY_OVER)
    finally:
        service.pipeline.retriever.store.close()
    return settings, registry, version, outcome


def test_a_rollback_drill_answers_with_each_adapter_in_turn_and_is_recorded(drilled):
    settings, registry, version, outcome = drilled
    assert outcome["ok"], outcome
    assert [s["served"] for s in outcome["steps"]] == [version, "v1", version]
    assert all(s["model_called"] and s["status"] for s in outcome["steps"])
    assert registry.promoted_version() == version and registry.promotion_history()[-2:] == ["v1", version]
    assert registry.events()[-1]["action"] == "drill" and registry.events()[-1]["rolled_back_to"] == "v1"


def test_a_drill_needs_somewhere_to_roll_back_to(answer_data, service):
    from eval.drill import rollback_drill

    # the session's service has only v1 ever promoted
    with pytest.raises(ConfigError, match="only adapter ever promoted"):
        rollback_drill(service)


def test_the_checklist_reads_each_line_from_the_artifacts(drilled, tmp_path):
    settings, _, version, _ = drilled
    _, checks = run_checklist(settings, version)
    by_name = {c.name: c for c in checks}
    assert by_name["rollback tested"].ok and "v1" in by_name["rollback tested"].evidence
    assert by_name["PII removed from the training data"].ok  # two clean questions re-scanned
    assert by_name["eval set locked (hash unchanged)"].ok  # the real gold set and its README
    assert by_name["monitoring alerts defined"].ok
    # no eval, no benchmark, no review for this version: each ✗ says what to run
    assert not by_name["schema validation passes"].ok and "policyrag eval --adapter v2" in by_name["schema validation passes"].evidence
    assert not by_name["latency measured under load"].ok and "policyrag bench answer" in by_name["latency measured under load"].evidence
    assert not by_name["human review done"].ok
    # v1 has no drill after it was registered, and no dataset
    _, v1 = run_checklist(settings, "v1")
    v1 = {c.name: c for c in v1}
    assert not v1["rollback tested"].ok and not v1["PII removed from the training data"].ok


def test_pii_left_in_the_training_data_is_a_cross(drilled, tmp_path):
    settings, *_ = drilled
    dataset = write_dataset(tmp_path / "dirty", ["I am John Smith, email john.smith@example.com: can I carry over leave?"])
    version = register_copy(settings.data_dir, dataset_path=str(dataset))
    check = next(c for c in run_checklist(settings, version)[1] if c.name.startswith("PII"))
    assert not check.ok and "EMAIL" in check.evidence


def test_a_changed_eval_set_a_stale_benchmark_and_incomplete_alerts_are_crosses(drilled, tmp_path):
    settings, _, version, _ = drilled
    gold = tmp_path / "_eval" / "gold.jsonl"
    gold.parent.mkdir()
    gold.write_bytes(settings.gold_set_file.read_bytes() + b"\n")  # one byte changed
    (gold.parent / "README.md").write_text((settings.gold_set_file.parent / "README.md").read_text())
    changed = settings.model_copy(update={"gold_set_file": gold})
    locked = next(c for c in run_checklist(changed, version)[1] if c.name.startswith("eval set locked"))
    assert not locked.ok and "changed without its lock record" in locked.evidence

    bench = settings.data_dir / "bench"
    bench.mkdir(exist_ok=True)
    old = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    result = {"single": {"p50_s": 4.0, "p95_s": 7.0}, "concurrent": {"users": 8, "p95_s": 16.0, "answers_per_s": 0.7}}
    (bench / "answer-2026-01-01T000000.json").write_text(json.dumps(
        {"at": old.isoformat(), "summary": {"adapter": version}, "results": {"vllm": result}}))
    latency = lambda now: next(c for c in run_checklist(settings, version, now=now)[1] if c.name.startswith("latency"))  # noqa: E731
    assert latency(old + dt.timedelta(days=2)).ok and "8 users p95 16.0 s" in latency(old + dt.timedelta(days=2)).evidence
    assert not latency(old + dt.timedelta(days=40)).ok  # older than checklist_max_bench_age_days

    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        group["rules"] = [r for r in group["rules"] if "citation_repairs" not in r.get("expr", "")]
    rules["groups"][0]["rules"].append({"alert": "Renamed", "expr": "rate(policyrag_no_such_metric_total[5m]) > 0"})
    partial = tmp_path / "alerts.yml"
    partial.write_text(yaml.safe_dump(rules))
    alerts = next(c for c in run_checklist(settings, version, alert_rules=partial)[1] if c.name.startswith("monitoring"))
    assert not alerts.ok and "citation-verification failures" in alerts.evidence
    assert "policyrag_no_such_metric_total" in alerts.evidence


def test_the_checklist_command_exits_non_zero_on_any_cross(drilled, monkeypatch):
    from policyrag.cli import app

    settings, _, version, _ = drilled
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(settings.data_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["checklist", "--adapter", version, "--json"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["adapter"] == version and not out["ok"] and len(out["checks"]) == 8
