"""The tuning benchmark harness runs both trainers on the same examples and reports figures."""

from core.settings import get_settings
from tests.tuning.test_trainer import pairs
from tuning.dataset import DatasetReport, write_dataset


def test_both_trainers_run_on_the_same_tokens_and_report_speed_and_memory(base_model_dir, tuning_settings, monkeypatch):
    from eval.bench_tuning import run_tuning_benchmark

    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(tuning_settings.data_dir))
    get_settings.cache_clear()
    folder = write_dataset(pairs(6), DatasetReport(), tuning_settings.datasets_dir)
    results = run_tuning_benchmark(steps=1, batch_size=2, dataset=folder)
    get_settings.cache_clear()
    base, ours = results["runs"]["baseline"][0], results["runs"]["ours"][0]
    assert base["tokens"] == ours["tokens"] > 0 and base["examples"] == ours["examples"] == 2
    for run in (base, ours):
        assert run["tokens_per_s"] > 0 and run["peak_rss_mib"] > 200 and run["train_loss"] > 0
    assert results["summary"]["speedup"] == round(ours["tokens_per_s"] / base["tokens_per_s"], 2)
