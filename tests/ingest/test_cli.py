import json

from typer.testing import CliRunner

from policyrag.cli import app
from tests.conftest import write_policy

runner = CliRunner()


def test_ingest_reports_rejections_by_file_and_exits_nonzero(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path / "data"))
    from core.settings import get_settings

    get_settings.cache_clear()
    root = tmp_path / "docs"
    write_policy(root, "ok.md", doc_id="ok", body="## 1. Rule\n\nA rule.")
    (root / "broken.md").write_text("no front matter here\n")
    result = runner.invoke(app, ["ingest", str(root), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["added"] == ["ok@v1"]
    assert report["rejected"] == [{
        "path": "broken.md", "reason": "no_metadata",
        "message": report["rejected"][0]["message"]}]
    assert "--default-groups" in report["rejected"][0]["message"]

    # the table view names the file, and the second run only re-checks
    result = runner.invoke(app, ["ingest", str(root), "--default-groups", "all-staff"])
    assert result.exit_code == 0, result.output
    assert "ingest summary" in result.output
    get_settings.cache_clear()


def test_ingest_of_a_missing_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tmp_path / "data"))
    from core.settings import get_settings

    get_settings.cache_clear()
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output
    get_settings.cache_clear()
