"""The trainer on the real base model (SmolLM2-135M): response-only loss, determinism, and a
short real training run that lands in the registry only when it finishes."""

import json
import shutil

import pytest
import torch

from core.contract import refusal, render_answer
from tuning.batching import IGNORE, Example, batches, collate
from tuning.config import TrainConfig
from tuning.dataset import DatasetReport, write_dataset
from tuning.examples import encode_pair
from tuning.pairs import ContextPassage, TrainingPair
from tuning.registry import AdapterRegistry
from tuning.trainer import load_for_training, response_loss, train_loop

MEAL = ContextPassage(citation_id="expenses@v2#c4", doc_id="expenses", title="Expenses Policy", section_path=("3.1 Meals",),
                      text="The daily meal allowance is GBP 55 in the UK, USD 70 in the US and EUR 60 in Germany.")
ANSWER = json.dumps({"status": "answered", "answer": "It is GBP 55 a day in the UK.",
                     "citations": [{"id": "expenses@v2#c4", "quote": "GBP 55 in the UK"}], "reason": None})


def pairs(n=8):
    out = []
    for i in range(n):
        answered = i % 2 == 0
        out.append(TrainingPair(
            id=f"s{i}/original/1", seed_id=f"s{i}", variant="original", user="alice",
            instruction=f"Question {i}: what is the daily meal allowance?" if answered else f"Question {i}: write a poem",
            context=(MEAL,), response=ANSWER if answered else render_answer(refusal("out_of_scope")),
            split="heldout" if i >= n - 2 else "train",
        ))
    return out


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def test_labels_cover_exactly_the_response_and_the_end_of_turn(tokenizer):
    example = encode_pair(tokenizer, pairs()[0])
    response = [t for t in example.labels if t != IGNORE]
    # the model is trained on the wire format: the quote becomes the id of the sentence holding it
    assert tokenizer.decode(response) == (
        '{"status": "answered", "citations": ["s1"], "answer": "It is GBP 55 a day in the UK.", "reason": null}<|im_end|>')
    prompt = tokenizer.decode(example.input_ids[: len(example.input_ids) - len(response)])
    assert prompt.endswith("<|im_start|>assistant\n") and "Passage 1: Expenses Policy > 3.1 Meals\n[s1] The daily meal allowance" in prompt


def test_response_only_logits_give_the_same_loss_as_the_full_head(base_model_dir, tokenizer):
    model, _ = load_for_training(base_model_dir, TrainConfig(dropout=0.0))
    model.eval()
    batch = collate([encode_pair(tokenizer, p) for p in pairs(3)], tokenizer.pad_token_id or 0)
    with torch.no_grad():
        sliced = response_loss(model, batch, logits_only_on_response=True)
        full = response_loss(model, batch, logits_only_on_response=False)
    assert torch.allclose(sliced, full, atol=1e-4), (sliced, full)


def test_heldout_status_accuracy_reads_the_status_token_of_each_row(base_model_dir, tokenizer):
    # the status value's first token is found by decoding ("answered" / "ref"), and the
    # held-out status accuracy is the teacher-forced arg-max there, checked against the full LM head
    from tuning.trainer import evaluate_heldout

    examples = [encode_pair(tokenizer, p) for p in pairs(5)]
    for e, p in zip(examples, pairs(5)):
        response = [t for t in e.labels if t != IGNORE]
        assert p.status.startswith(tokenizer.decode(response[e.status_at:e.status_at + 1]).strip())
        assert tokenizer.decode(response[:e.status_at]).startswith('{"status"')
    model, _ = load_for_training(base_model_dir, TrainConfig(dropout=0.0))
    model.eval()
    with torch.no_grad():  # rows 0, 2, 4 get the status token the model predicts there (causal:
        for row in (0, 2, 4):  # the prediction at the position before it does not change)
            e = examples[row]
            at = len(e.input_ids) - e.response_tokens + e.status_at
            guess = int(model(input_ids=torch.tensor([e.input_ids[:at]])).logits[0, -1].argmax())
            ids = [*e.input_ids[:at], guess, *e.input_ids[at + 1:]]
            examples[row] = Example(e.pair_id, ids, [*e.labels[:at], guess, *e.labels[at + 1:]], e.kind, e.status_at)
    config = TrainConfig(micro_batch_size=2, precision="fp32")
    loss, accuracy = evaluate_heldout(model, examples, config, pad_id=tokenizer.pad_token_id or 0)
    hits = 0
    with torch.no_grad():
        for e in examples:  # one row at a time, the whole head: no offsets to get wrong
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            at = len(e.input_ids) - e.response_tokens + e.status_at
            hits += int(logits[at - 1].argmax() == e.input_ids[at])
    assert hits >= 3 and accuracy == hits / len(examples) and loss > 0
    unmarked = [Example(e.pair_id, e.input_ids, e.labels, e.kind) for e in examples]
    assert evaluate_heldout(model, unmarked, config, pad_id=0)[1] is None


def test_length_bucketing_cuts_padding():
    examples = [Example(str(i), [1] * (50 + (i * 37) % 400), [IGNORE] * (50 + (i * 37) % 400)) for i in range(64)]

    def padding(bucketing):
        stream = batches(examples, 4, seed=0, bucketing=bucketing)
        total = 0
        for _ in range(16):
            batch = next(stream)
            width = max(len(e.input_ids) for e in batch)
            total += sum(width - len(e.input_ids) for e in batch)
        return total

    assert padding(True) < padding(False) / 4


def test_same_seed_same_adapter_weights(base_model_dir, tokenizer):
    examples = [encode_pair(tokenizer, p) for p in pairs(4)]
    config = TrainConfig(max_steps=2, batch_size=2, eval_examples=0)

    def run(seed):
        cfg = TrainConfig(**{**config.to_json(), "seed": seed})
        model, _ = load_for_training(base_model_dir, cfg)
        _, state = train_loop(model, examples, [], cfg, pad_id=0)
        return state

    a, b, c = run(0), run(0), run(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_keep_last_trains_the_whole_schedule_and_returns_its_end(base_model_dir, tokenizer):
    # keep="last": every held-out check is recorded, none stops the run or chooses the weights
    from tuning.trainer import _lora_state

    examples = [encode_pair(tokenizer, p) for p in pairs(6)]
    config = TrainConfig(max_steps=4, batch_size=2, eval_every=1, eval_examples=2, patience=1, keep="last",
                         learning_rate=0.5, warmup_steps=0)
    model, _ = load_for_training(base_model_dir, config)
    result, state = train_loop(model, examples[:4], examples[4:], config, pad_id=0)
    assert result.stopped == "max_steps" and result.steps == result.best_step == 4
    assert [h[0] for h in result.eval_history] == [1, 2, 3, 4] and result.eval_loss == result.eval_history[-1][1]
    final = _lora_state(model)
    assert state.keys() == final.keys() and all(torch.equal(state[k], final[k]) for k in state)
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.keep must be 'best' or 'last'"):
        TrainConfig(keep="first")


def test_training_registers_a_self_describing_adapter_and_never_promotes(base_model_dir, tuning_settings):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuning.export import export_merged
    from tuning.train import train_adapter

    folder = write_dataset(pairs(), DatasetReport(), tuning_settings.datasets_dir)
    registry = AdapterRegistry(tuning_settings.adapters_dir)
    steps = []
    config = TrainConfig(max_steps=3, batch_size=2, eval_every=2, eval_examples=2, compare_items=2, compare_max_new_tokens=24)
    record = train_adapter(tuning_settings, config, dataset=folder, registry=registry, on_step=steps.append)

    assert record.version == "v1" and registry.promoted_version() is None
    m = record.manifest
    assert m.dataset_hash.startswith(folder.name) and m.base_model.name == "SmolLM2-135M-Instruct"
    assert len(m.base_model.sha256) == 64 and m.config["max_steps"] == 3
    assert m.metrics["training"]["steps"] == 3 and m.metrics["training"]["eval_loss"] is not None
    assert m.metrics["compare"]["items"] == 2 and "schema_valid" in m.metrics["compare"]["adapter"]
    assert [s.step for s in steps] == [1, 2, 3] and steps[-1].tokens_per_s > 0
    assert registry.load("v1").manifest.files["adapter_model.safetensors"]
    # the status decider is fitted on the two held-out pairs (one answered, one refused) and
    # registered with the weights
    from tuning.status import DECIDER_FILE, StatusDecider

    assert m.files[DECIDER_FILE] and m.metrics["status_decider"]["by_status"] == {"answered": 1, "refused": 1, "escalate": 0}
    assert StatusDecider.load(record.path).decide([-0.1, -3.0, -3.0, 0.8, 0.8]) in ("answered", "refused")
    # corrected to the status shares of the whole dataset, not the 1:1 of the two it was fitted on
    from tuning.dataset import load_dataset
    from tuning.status import status_prior

    shares = status_prior(load_dataset(folder)[0])
    assert m.metrics["status_decider"]["prior"] == {s: round(v, 4) for s, v in shares.items()}
    # `tune calibrate`: the same weights with a freshly fitted decider, as a new version
    from tuning.train import calibrate_registered

    again = calibrate_registered(tuning_settings, "v1", items=2, registry=registry)
    assert again.version == "v2" and again.manifest.calibrated_from == "v1"
    assert again.manifest.files["adapter_model.safetensors"] == m.files["adapter_model.safetensors"]
    assert again.manifest.files[DECIDER_FILE] and again.manifest.metrics["status_decider"]["pairs"] == 2
    assert again.manifest.prompt_fingerprint == m.prompt_fingerprint and registry.promoted_version() is None

    # `tune train --resume-from v1`: the run starts from v1's weights (one step at a negligible
    # learning rate leaves them as they were; a fresh LoRA starts with B = 0), on the same dataset
    # and LoRA shape only
    from safetensors.torch import load_file

    from core.errors import ConfigError

    still = TrainConfig(max_steps=1, batch_size=2, eval_examples=0, compare_items=0, status_fit_items=0,
                        learning_rate=1e-9, warmup_steps=0)
    resumed = train_adapter(tuning_settings, still, dataset=folder, registry=registry, resume_from="v1")
    assert resumed.manifest.resumed_from == "v1" and resumed.manifest.dataset_hash == m.dataset_hash
    before, after = load_file(record.path / "adapter_model.safetensors"), load_file(resumed.path / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(t.abs().max() > 0 for k, t in before.items() if "lora_B" in k)
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-5
    with pytest.raises(ConfigError, match="cannot resume from v1: its LoRA settings"):
        train_adapter(tuning_settings, TrainConfig(max_steps=1, batch_size=2, rank=8), dataset=folder,
                      registry=registry, resume_from="v1")
    # a grown dataset may continue v1 when every shared seed keeps its split; one that moves a
    # seed between splits (here s4 and s5, trained on by v1, held out in pairs(6)) may not
    extra = [p.model_copy(update={"id": f"x{p.id}", "seed_id": f"x{p.seed_id}", "split": "train"}) for p in pairs(2)]
    grown = write_dataset([*pairs(), *extra], DatasetReport(), tuning_settings.datasets_dir)
    again_more = train_adapter(tuning_settings, still, dataset=grown, registry=registry, resume_from="v1")
    assert again_more.manifest.resumed_from == "v1" and again_more.manifest.dataset_hash.startswith(grown.name)
    other = write_dataset(pairs(6), DatasetReport(), tuning_settings.datasets_dir)
    with pytest.raises(ConfigError, match=r"cannot resume from v1: .* 2 seed\(s\) changed split .*\(s4, s5\)"):
        train_adapter(tuning_settings, still, dataset=other, registry=registry, resume_from="v1")
    shutil.rmtree(folder)  # v1's dataset gone: its split cannot be checked
    with pytest.raises(ConfigError, match="which is not under"):
        train_adapter(tuning_settings, still, dataset=grown, registry=registry, resume_from="v1")
    folder = write_dataset(pairs(), DatasetReport(), tuning_settings.datasets_dir)
    with registry.staging() as staged:  # v1's weights, registered as trained with another prompt
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(record.path / name, staged / name)
        old_prompt = registry.register(staged, {**m.to_json(), "prompt_fingerprint": "0" * 16})
    with pytest.raises(ConfigError, match=f"cannot resume from {old_prompt.version}: was trained with another prompt"):
        train_adapter(tuning_settings, still, dataset=folder, registry=registry, resume_from=old_prompt.version)

    # merged export computes what base + adapter computes
    out = export_merged(record, tuning_settings.data_dir / "merged")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), record.path)
        merged = AutoModelForCausalLM.from_pretrained(out)
        base = AutoModelForCausalLM.from_pretrained(base_model_dir)
        merge_error = (peft_model(ids).logits - merged(ids).logits).abs().max()
        adapter_effect = (base(ids).logits - merged(ids).logits).abs().max()
        assert merge_error < 0.01 and merge_error < adapter_effect / 10, (merge_error, adapter_effect)
    assert json.loads((out / "policyrag-merged.json").read_text())["merged_from"] == "v1"


def test_a_training_run_that_dies_leaves_the_registry_as_it_was(base_model_dir, tuning_settings):
    from tuning.train import train_adapter

    folder = write_dataset(pairs(), DatasetReport(), tuning_settings.datasets_dir)
    registry = AdapterRegistry(tuning_settings.adapters_dir)

    def die(info):
        if info.step == 2:
            raise RuntimeError("out of memory (simulated inside the real loop)")

    with pytest.raises(RuntimeError, match="out of memory"):
        train_adapter(tuning_settings, TrainConfig(max_steps=4, batch_size=2, compare_items=0),
                      dataset=folder, registry=registry, on_step=die)
    assert registry.versions() == [] and registry.promoted_version() is None
    assert not list((tuning_settings.adapters_dir / ".staging").iterdir())


def test_qlora_loads_the_base_in_4bit_and_trains(base_model_dir, tokenizer):
    import bitsandbytes as bnb

    config = TrainConfig(method="qlora", max_steps=1, batch_size=1, eval_examples=0)
    model, quantized = load_for_training(base_model_dir, config)
    assert quantized
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    short = TrainingPair(**{**pairs(2)[1].model_dump(), "context": ()})  # a refusal needs no passage
    result, state = train_loop(model, [encode_pair(tokenizer, short)], [], config, pad_id=0)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.train_loss)) and state


def test_bad_training_options_name_the_field():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.rank must be >= 1, got 0"):
        TrainConfig(rank=0)
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['epochs'\]"):
        TrainConfig.with_overrides(epochs=3)


def test_compare_items_spread_over_kinds_and_seeds():
    from tuning.compare import pick_compare_items

    many = [TrainingPair(**{**p.model_dump(), "id": f"{p.seed_id}/paraphrase/{j}"}) for p in pairs(8) for j in (1, 2, 3)]
    picked = pick_compare_items(many, 8)
    assert len({p.seed_id for p in picked}) == 8  # one per seed before any seed repeats
    kinds = [json.loads(p.response)["status"] for p in picked]
    assert kinds.count("answered") == kinds.count("refused") == 4
