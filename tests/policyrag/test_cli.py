"""policyrag/cli.py, the roof: every stage's commands mounted on one app, a `PolicyRagError` from
any depth printed once as `error (code): message` with exit 2, and the gate handed down to
`tune train --promote` (eval sits above tuning)."""

from __future__ import annotations

from typer.testing import CliRunner

from core.settings import get_settings
from policyrag.cli import app
from tests.tuning.test_trainer import pairs
from tuning.dataset import DatasetReport, write_dataset
from tuning.registry import AdapterRegistry

runner = CliRunner()


def test_every_stage_command_is_mounted_on_the_root():
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"ingest", "search", "tune", "adapters", "serve", "ask", "audit", "keys", "eval", "report",
            "checklist", "review", "bench", "models", "up"} <= names
    for group, commands in (("adapters", {"list", "show", "promote", "rollback", "drill", "export"}),
                            ("bench", {"ingest", "retrieval", "tuning", "answer"}),
                            ("tune", {"build-data", "train", "compare"})):
        sub = next(g for g in app.registered_groups if g.name == group).typer_instance
        assert commands <= {c.name for c in sub.registered_commands}, group


def test_a_nested_command_error_is_printed_once_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["adapters", "show", "v9"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.output.count("error (adapter_not_found)") == 1 and "v9" in result.output


def test_tune_train_promote_goes_through_the_gate_handed_down_by_the_root(tuning_settings, monkeypatch):
    """The gate refuses an adapter without an eval on the locked set (here there is not even a set):
    trained and registered, not promoted, and the refusal says why."""
    folder = write_dataset(pairs(), DatasetReport(), tuning_settings.datasets_dir)
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tuning_settings.data_dir))
    monkeypatch.setenv("POLICYRAG_GOLD_SET_FILE", str(tuning_settings.gold_set_file))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["tune", "train", "--dataset", str(folder), "--max-steps", "1", "--batch-size", "2",
                                     "--compare-items", "0", "--time-budget", "0", "--promote"])
    finally:
        get_settings.cache_clear()
    registry = AdapterRegistry(tuning_settings.adapters_dir)
    assert result.exit_code == 2, result.output
    assert result.output.count("error (promotion_refused)") == 1 and "nothing to gate on" in result.output
    assert registry.versions() == ["v1"] and registry.promoted_version() is None


def test_the_data_folder_and_what_is_written_in_it_are_the_owners_alone(tmp_path):
    """Issue 15 #15: the data folder (index, manifest, audit, eval runs) was 0755/0644."""
    import os
    import stat
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as an earlier version left it
    env = {**os.environ, "POLICYRAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "policyrag", "keys", "create", "--user", "alice"], env=env, check=True,
                   capture_output=True, timeout=120)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    written = [p for p in data.rglob("*")]
    assert written and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in written), \
        {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
