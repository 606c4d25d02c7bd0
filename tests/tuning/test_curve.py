"""The learning curve (tuning/curve.py) on the real base model: a bundle made here
(eval/curve_bundle.py), a short run of the product's training loop with checkpoints, and the
kept adapter imported back into the registry (`tune import`) with its status decider."""

import gzip
import json

import pytest
import torch

from tests.tuning.test_trainer import MEAL, pairs
from tuning.dataset import DatasetReport, write_dataset


def eval_item(item_id, expected, *, called=True, status="answered"):
    """An eval run's item row, as eval/runner.py writes it."""
    features = {"lp_answered": -0.2, "lp_refused": -2.0, "lp_escalate": -4.0,
                "max_sentence_cosine": 0.7, "max_passage_cosine": 0.6}
    return {"id": item_id, "forms": [], "expected_status": expected, "status": status,
            "query": "What is the daily meal allowance?",
            "passages": [{"id": MEAL.citation_id, "title": MEAL.title, "label": "Expenses Policy v2 › 3.1 Meals",
                          "section": list(MEAL.section_path), "text": MEAL.text}] if called else [],
            "status_decision": {"features": features} if called else None}


def test_passages_of_takes_the_recorded_title_and_reads_older_runs_labels():
    from eval.curve_bundle import passages_of

    row = eval_item("a", "answered")
    assert [(p.citation_id, p.title, p.section_path, p.text) for p in passages_of(row)] == [
        (MEAL.citation_id, "Expenses Policy", tuple(MEAL.section_path), MEAL.text)]
    row["passages"][0]["title"] = "Expenses Policy v2 (UK)"  # a title with " v" in it is kept whole
    assert passages_of(row)[0].title == "Expenses Policy v2 (UK)"
    del row["passages"][0]["title"]  # a run recorded before titles were
    assert passages_of(row)[0].title == "Expenses Policy"


@pytest.fixture
def bundle(tuning_settings, tmp_path):
    from eval.curve_bundle import build_bundle

    folder = write_dataset(pairs(), DatasetReport(), tuning_settings.datasets_dir)
    items = [eval_item("a", "answered"), eval_item("b", "refused"), eval_item("c", "refused", called=False, status="refused")]
    summary = build_bundle(tuning_settings, items, tmp_path / "bundle", run_id="run-1", dataset=folder, fit_items=2)
    assert summary["examples"] == 8 and summary["fit"] == 2 and summary["gold"] == 3
    return tmp_path / "bundle", folder


def test_the_curve_trains_measures_each_checkpoint_and_its_adapter_imports(bundle, base_model_dir, tuning_settings, tmp_path):
    from safetensors.torch import load_file

    from core.prompt import build_messages
    from tuning.curve import main, read_rows
    from tuning.registry import AdapterRegistry
    from tuning.status import STATUS_PREFIX
    from tuning.train import import_trained

    path, dataset = bundle
    gold = read_rows(path, "gold")
    assert [g["ids"] is None for g in gold] == [False, False, True]  # the third was decided without the model
    # the gold prompt is the service's: the run's passages and query, then the status prefix
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    prompt = tokenizer.apply_chat_template(build_messages("What is the daily meal allowance?", [MEAL]), tokenize=False,
                                           add_generation_prompt=True) + STATUS_PREFIX
    assert gold[0]["ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]

    out = tmp_path / "curve"
    assert main([str(path), str(out), "--base", str(base_model_dir), "--epochs", "2", "--checks", "3"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    points = curve["points"]
    assert [p["step"] for p in points] == [0, 1, 2, 3]
    assert points[-1]["heldout_loss"] < points[0]["heldout_loss"]  # the held-out pairs share the training targets
    for p in points:
        g = p["gold"]
        assert 0 <= g["status_accuracy"] <= 1 and p["decider_fit"]["pairs"] == 2
        # each checkpoint's decider is corrected to the dataset's status shares (the bundle's)
        assert set(p["decider_fit"]["prior"]) == {"answered", "refused", "escalate"}
        # the item decided without the model keeps its run's status: always a right refusal
        assert g["refused_precision_recall"][1] in (0.5, 1.0)
    kept = curve["kept"]
    assert all(p["heldout_status_accuracy"] in (0.0, 0.5, 1.0) for p in points)  # two held-out pairs
    assert kept["final"] == 3 and kept["best"] == max(
        points[1:], key=lambda p: (p["heldout_status_accuracy"], -p["heldout_loss"]))["step"]
    weights = load_file(str(out / "best" / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.bfloat16 for t in weights.values())

    record = import_trained(tuning_settings, out / "best", items=2)
    m = record.manifest
    assert record.version == "v1" and AdapterRegistry(tuning_settings.adapters_dir).promoted_version() is None
    assert m.dataset_hash.startswith(dataset.name) and m.metrics["training"]["step"] == kept["best"]
    assert m.metrics["status_decider"]["pairs"] == 2 and m.files["status-decider.json"]
    assert m.metrics["status_decider"]["prior"] == points[-1]["decider_fit"]["prior"]  # the same dataset's
    imported = load_file(str(record.path / "adapter_model.safetensors"))
    assert set(imported) == set(weights)
    assert all(torch.equal(imported[k].to(torch.bfloat16), weights[k]) for k in weights)


def test_a_bundle_for_other_base_weights_is_refused_before_training(bundle, base_model_dir, tmp_path):
    from tuning.curve import main

    path, _ = bundle
    meta = json.loads(gzip.open(path / "meta.json.gz", "rt").read())
    meta["weights_digest"] = "0" * 64
    with gzip.open(path / "meta.json.gz", "wt") as handle:
        json.dump(meta, handle)
    assert main([str(path), str(tmp_path / "out"), "--base", str(base_model_dir), "--epochs", "1"]) == 2
    assert "not the bundle's" in (tmp_path / "out" / "log.txt").read_text()
    assert not (tmp_path / "out" / "curve.json").exists()


def test_import_refuses_an_adapter_trained_with_another_prompt(bundle, base_model_dir, tuning_settings, tmp_path):
    from core.errors import ConfigError
    from tuning.train import import_trained

    folder = tmp_path / "adapter"
    folder.mkdir()
    _, dataset = bundle
    from core.provision import base_model_identity

    (folder / "training.json").write_text(json.dumps({
        "dataset_hash": json.loads((dataset / "report.json").read_text())["dataset_hash"],
        "base_model": base_model_identity(tuning_settings)[1].as_dict(), "prompt_fingerprint": "another"}))
    with pytest.raises(ConfigError, match="another prompt"):
        import_trained(tuning_settings, folder)


def test_gold_metrics_give_accuracy_and_per_status_precision_recall_as_eval_reports_them():
    from tuning.curve import gold_metrics

    gold = [{"expected": e, "forms": f} for e, f in [("refused", []), ("refused", ["typo"]), ("answered", []),
                                                       ("answered", []), ("escalate", ["terse"])]]
    decided = ["refused", "answered", "answered", "refused", "answered"]
    assert gold_metrics(decided, gold) == {
        "status_accuracy": 0.4, "original_status_accuracy": 0.6667,
        "answered_precision_recall": [0.3333, 0.5], "refused_precision_recall": [0.5, 0.5],
        "escalate_precision_recall": [None, 0.0],  # never decided
    }


@pytest.mark.slow
def test_a_base_dequantized_from_the_gguf_has_the_provisioned_weights_digest(base_model_dir, tmp_path):
    from safetensors.torch import load_file

    from core.provision import base_model_gguf
    from core.settings import Settings
    from tuning.curve import base_from_gguf, weights_digest

    folder = base_from_gguf(base_model_gguf(Settings()), tmp_path / "base")
    assert weights_digest(load_file(str(folder / "model.safetensors"))) == \
        weights_digest(load_file(str(base_model_dir / "model.safetensors")))
