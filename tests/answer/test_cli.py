"""`policyrag ask`, `policyrag audit` and `policyrag keys` on a private copy of the answer data."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from core.settings import get_settings
from policyrag.cli import app
from tests.answer.helpers import CARRY_OVER, CARRY_OVER_CITATION, RESTRICTED, copy_data

runner = CliRunner()


@pytest.fixture
def cli_data(answer_data, tmp_path, monkeypatch):
    data = copy_data(answer_data, tmp_path / "data")
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(data))
    monkeypatch.setenv("POLICYRAG_ANSWER_BACKEND", "local")
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def test_ask_runs_the_service_pipeline_and_audit_reads_it_back(cli_data):
    result = runner.invoke(app, ["ask", CARRY_OVER, "--as", "alice", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["status"] == "answered" and body["citations"][0]["id"] == CARRY_OVER_CITATION
    assert body["versions"]["backend"] == "local" and body["versions"]["adapter"] == "v1"

    result = runner.invoke(app, ["ask", RESTRICTED, "--as", "alice"])
    assert result.exit_code == 0 and "refused (no_authorized_source)" in result.stdout

    today = dt.date.today().isoformat()
    lines = runner.invoke(app, ["audit", "--user", "alice", "--since", today, "--until", today, "--json"]).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["question"] for r in records] == [CARRY_OVER, RESTRICTED]
    assert all(r["endpoint"] == "cli" for r in records)
    assert runner.invoke(app, ["audit", "--user", "bob", "--json"]).stdout.strip() == ""
    assert runner.invoke(app, ["audit", "--since", "2000-01-01", "--until", "2000-01-02", "--json"]).stdout.strip() == ""
    table = runner.invoke(app, ["audit", "--user", "alice"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "2 records" in table.stdout and CARRY_OVER_CITATION in table.stdout


def test_ask_and_audit_name_bad_input(cli_data):
    result = runner.invoke(app, ["ask", CARRY_OVER, "--as", "mallory"])
    assert result.exit_code == 2 and "unknown_user" in result.output
    result = runner.invoke(app, ["audit", "--since", "yesterday"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output


def test_keys_are_created_listed_and_revoked(cli_data):
    created = runner.invoke(app, ["keys", "create", "--user", "bob", "--label", "hr-bot"])
    assert created.exit_code == 0
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("prk_")
    listing = runner.invoke(app, ["keys", "list"]).stdout
    assert "bob" in listing and "hr-bot" in listing and key not in listing
    assert "revoked 1" in runner.invoke(app, ["keys", "revoke", "--user", "bob"]).stdout
    assert runner.invoke(app, ["keys", "create", "--user", "mallory"]).exit_code == 2
