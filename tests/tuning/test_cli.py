"""`policyrag tune build-data` on the shipped seeds, and the `adapters` commands."""

import json

import pytest
from typer.testing import CliRunner

from core.settings import get_settings
from policyrag.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(tuning_settings, monkeypatch):
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tuning_settings.data_dir))
    monkeypatch.setenv("POLICYRAG_GOLD_SET_FILE", str(tuning_settings.gold_set_file))
    get_settings.cache_clear()
    yield tuning_settings
    get_settings.cache_clear()


def test_build_data_on_the_shipped_seeds_gives_every_target_kind(cli_env):
    result = runner.invoke(app, ["tune", "build-data", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] >= 500 and report["heldout"] > 0
    assert set(report["by_target"]) == {
        "answered", "escalate/needs_human", "refused/no_authorized_source", "refused/not_in_policy", "refused/out_of_scope"}
    assert {"restricted", "distractor", "shuffled", "paraphrase"} <= set(report["by_variant"])
    # variants whose question does not retrieve the seed's quote: 205 of 4,417 with the section seeds
    assert report["rejected"].get("context_miss", 0) <= 0.08 * report["candidates"]
    assert {"restricted", "unsupported"} <= set(report["by_variant"])
    lines = (cli_env.datasets_dir / report["dataset"].rsplit("/", 1)[-1] / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == report["pairs"]
    # rebuilding the same seeds on the same index gives the same dataset version
    again = json.loads(runner.invoke(app, ["tune", "build-data", "--json"]).stdout)
    assert again["dataset_hash"] == report["dataset_hash"]


def test_build_data_refuses_seeds_that_overlap_the_gold_set(cli_env):
    cli_env.gold_set_file.write_text(json.dumps({"id": "gold-1", "question": "What is the daily meal allowance in the UK?"}) + "\n")
    result = runner.invoke(app, ["tune", "build-data"])
    assert result.exit_code == 2
    assert "gold_overlap" in result.output and "gold-1" in result.output
    assert not cli_env.datasets_dir.exists()


def test_adapter_commands_explain_an_empty_registry_and_unknown_versions(cli_env):
    result = runner.invoke(app, ["adapters", "list"])
    assert result.exit_code == 0 and "no adapters yet" in result.output
    result = runner.invoke(app, ["adapters", "promote", "v3"])
    assert result.exit_code == 2 and "adapter_not_found" in result.output
    result = runner.invoke(app, ["adapters", "rollback"])
    assert result.exit_code == 2 and "nothing to roll back to" in result.output
