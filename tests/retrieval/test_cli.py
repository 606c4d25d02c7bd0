"""`policyrag search` (retrieval/cli.py): exactly what a user would get, through the root app."""

import json

from typer.testing import CliRunner

from policyrag.cli import app
from tests.conftest import write_policy

runner = CliRunner()


def test_search_shows_what_a_user_would_get(tmp_path, monkeypatch):
    from tests.conftest import CORPUS

    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path / "data"))
    from core.settings import get_settings

    get_settings.cache_clear()
    root = tmp_path / "docs"
    write_policy(root, "bikes.md", doc_id="bikes", body="## 1. Bikes\n\nBicycles may be parked in the basement cage.")
    write_policy(root, "pay.md", doc_id="pay", groups="[hr]", body="## 1. Bands\n\nBicycle allowance band L5 is GBP 900.")
    assert runner.invoke(app, ["ingest", str(root)]).exit_code == 0
    monkeypatch.setenv("POLICYRAG_DIRECTORY_FILE", str(CORPUS / "directory.yaml"))
    get_settings.cache_clear()
    result = runner.invoke(app, ["search", "where can I park my bicycle", "--as", "alice", "--json"])
    assert result.exit_code == 0, result.output
    passages = json.loads(result.stdout)
    assert [p["doc_id"] for p in passages] == ["bikes"]
    assert passages[0]["citation_id"] == "bikes@v1#c0"
    unknown = runner.invoke(app, ["search", "bicycle", "--as", "mallory"])
    assert unknown.exit_code == 2 and "unknown user" in unknown.output
    get_settings.cache_clear()


def test_search_with_a_bad_mode_is_a_config_error_printed_once_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["search", "leave", "--as", "alice", "--mode", "fuzzy"])
    assert result.exit_code == 2
    assert result.output.count("error (config_error)") == 1 and "--mode 'fuzzy'" in result.output
