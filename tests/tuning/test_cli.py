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


HAND_WRITTEN = "policies/_tuning/seeds.yaml"  # the full folder (688 seeds) takes minutes: see the next test


def test_build_data_on_the_shipped_seeds_gives_every_target_kind(cli_env):
    result = runner.invoke(app, ["tune", "build-data", "--seeds", HAND_WRITTEN, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] >= 500 and report["heldout"] > 0
    assert set(report["by_target"]) == {
        "answered", "escalate/needs_human", "refused/no_authorized_source", "refused/not_in_policy", "refused/out_of_scope"}
    assert {"restricted", "distractor", "shuffled", "paraphrase"} <= set(report["by_variant"])
    assert report["rejected"].get("context_miss", 0) <= 10  # seeds whose quote retrieval misses
    assert {"restricted", "unsupported"} <= set(report["by_variant"])
    lines = (cli_env.datasets_dir / report["dataset"].rsplit("/", 1)[-1] / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == report["pairs"]
    # rebuilding the same seeds on the same index gives the same dataset version
    again = json.loads(runner.invoke(app, ["tune", "build-data", "--seeds", HAND_WRITTEN, "--json"]).stdout)
    assert again["dataset_hash"] == report["dataset_hash"]


def test_every_shipped_seed_quotes_the_indexed_text_of_a_document_its_user_may_read(cli_env):
    """The whole seed folder, checked against the index without retrieval (building all 688 seeds'
    pairs takes minutes): every quote is verbatim in a chunk of its document, and the asker may
    read that document (a typo would silently become a `context_miss`)."""
    from retrieval.acl import may_read, resolve_principal
    from retrieval.directory import load_directory
    from retrieval.store import stored_chunks
    from retrieval.store_factory import open_store
    from tuning.seeds import load_seeds

    settings = get_settings()
    seeds = load_seeds(settings.tuning_seeds_file)
    assert len(seeds) >= 600 and len({s.id for s in seeds}) == len(seeds)
    store = open_store(settings)
    try:
        chunks = list(stored_chunks(store))
    finally:
        store.close()
    directory = load_directory(settings.directory_file)
    problems = []
    for seed in (s for s in seeds if s.quote):
        of_doc = [c for c in chunks if c.doc_id == seed.doc_id]
        if not any(seed.quote in c.text for c in of_doc):
            problems.append(f"{seed.id}: quote not in {seed.doc_id}")
        elif not may_read(resolve_principal(directory, seed.user), of_doc[0].groups, of_doc[0].region):
            problems.append(f"{seed.id}: {seed.user} may not read {seed.doc_id}")
    assert not problems, problems[:10]


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
