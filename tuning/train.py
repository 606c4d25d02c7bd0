"""`policyrag tune train`: dataset -> LoRA/QLoRA adapter -> compared with the base -> registry.

A run trains in a staging folder and registers the adapter only when it finished; it never
promotes (promotion is `policyrag adapters promote`, behind the eval gate).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.digest import sha256_file
from core.errors import ConfigError
from core.provision import base_model_identity
from core.references import prompt_fingerprint
from core.settings import Settings
from tuning.compare import generate_answers, pick_compare_items, score_outputs
from tuning.config import TrainConfig
from tuning.dataset import latest_dataset, load_dataset
from tuning.examples import encode_pair
from tuning.registry import AdapterRecord, AdapterRegistry
from tuning.trainer import StepInfo, load_for_training, train_loop

logger = logging.getLogger(__name__)


def train_adapter(
    settings: Settings,
    config: TrainConfig,
    *,
    dataset: Path | None = None,
    registry: AdapterRegistry | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    on_step: Callable[[StepInfo], None] = lambda info: None,
    resume_from: str | None = None,
) -> AdapterRecord:
    """Train an adapter on `dataset` (default: the latest built) and register it. `resume_from`
    ("vN") starts from that adapter's weights instead of a fresh LoRA: more passes over the same
    dataset, or over a grown one that keeps every shared seed in the split it had (so nothing held
    out was ever trained on, and nothing held out now was trained on before)."""
    from peft import set_peft_model_state_dict
    from transformers import AutoTokenizer

    registry = registry or AdapterRegistry(settings.adapters_dir)
    folder = dataset or latest_dataset(settings.datasets_dir)
    pairs, dataset_hash = load_dataset(folder)
    base_dir, base = base_model_identity(settings)

    on_stage("tokenizing the training pairs")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [(pair, encode_pair(tokenizer, pair)) for pair in pairs]
    too_long = [pair.id for pair, ex in encoded if len(ex.input_ids) > config.max_seq_len]
    train = [ex for pair, ex in encoded if pair.split == "train" and len(ex.input_ids) <= config.max_seq_len]
    heldout = [ex for pair, ex in encoded if pair.split == "heldout" and len(ex.input_ids) <= config.max_seq_len]
    if too_long:
        logger.warning("%d pairs longer than max_seq_len=%d skipped", len(too_long), config.max_seq_len)

    previous = _resumable(settings, registry, resume_from, (pairs, dataset_hash), base, config) if resume_from else None
    on_stage(f"loading {base.name} with LoRA r={config.rank}" + (f", from {resume_from}'s weights" if previous else ""))
    model, quantized = load_for_training(base_dir, config)
    if previous is not None:
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(previous.path / "adapter_model.safetensors"))
    with registry.staging() as staged:
        on_stage(f"training on {len(train)} pairs ({len(heldout)} held out)")
        result, best = train_loop(model, train, heldout, config, pad_id=pad_id, on_step=on_step)
        set_peft_model_state_dict(model, best)
        model.save_pretrained(staged)
        decider = None
        if config.status_fit_items:
            heldout_count = sum(p.split == "heldout" for p in pairs)
            on_stage(f"fitting the status decider on {min(heldout_count, config.status_fit_items)} held-out pairs")
            decider = fit_status_decider(settings, model, tokenizer, pairs, config.status_fit_items)
            if decider is not None:
                decider.save(staged)

        compare = {}
        if config.compare_items:
            items = pick_compare_items([p for p in pairs if p.split == "heldout"], config.compare_items)
            on_stage(f"comparing base and adapter on {len(items)} held-out items")
            compare = compare_with_base(model, tokenizer, items, max_new_tokens=config.compare_max_new_tokens,
                                        mergeable=not quantized)
        training = {
            "steps": result.steps, "tokens": result.tokens, "wall_s": round(result.wall_s, 1),
            "tokens_per_s": round(result.tokens_per_s, 1), "train_loss": round(result.train_loss, 4),
            "eval_loss": None if result.eval_loss is None else round(result.eval_loss, 4),
            "eval_status_accuracy": result.eval_status_accuracy,
            "best_step": result.best_step, "stopped": result.stopped,
            "eval_history": result.eval_history, "train_pairs": len(train),
            "heldout_pairs": len(heldout), "skipped_too_long": len(too_long),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        manifest = _manifest(settings, base, dataset_hash, folder, "qlora" if quantized else "lora", config.to_json(),
                             {"training": training, "compare": {k: v for k, v in compare.items() if k != "outputs"}},
                             decider)
        if previous is not None:
            manifest["resumed_from"] = previous.version
        if compare:
            import json

            (staged / "compare-outputs.json").write_text(json.dumps(compare["outputs"], indent=1))
        return registry.register(staged, manifest)


def _resumable(settings: Settings, registry: AdapterRegistry, version: str, dataset: tuple[list, str], base,
               config: TrainConfig) -> AdapterRecord:
    """The registered adapter a training run may start from: same base model and prompt (the
    check serving makes), same LoRA shape, and a dataset whose split agrees with the one it was
    trained on (`_split_problem`)."""
    record = registry.load(version)
    m = record.manifest
    trained = {k: m.config.get(k) for k in ("rank", "alpha", "target_modules", "method")}
    wanted = {"rank": config.rank, "alpha": config.alpha, "target_modules": config.target_modules, "method": config.method}
    problem = (_split_problem(settings.datasets_dir, m.dataset_hash, *dataset)
               or m.incompatibility(base, prompt_fingerprint())
               or (trained != wanted and f"its LoRA settings {trained} differ from this run's {wanted}"))
    if problem:
        raise ConfigError(f"cannot resume from {version}: {problem}")
    return record


def _split_problem(datasets_dir: Path, trained_hash: str, pairs: list, dataset_hash: str) -> str | None:
    """Why `pairs` may not continue a training run on dataset `trained_hash`, or None: a seed in
    both datasets must sit in the same split (seeds are split by a hash of their id, so a grown
    dataset built with the same held-out fraction agrees; another fraction does not)."""
    if trained_hash == dataset_hash:
        return None
    try:
        trained, _ = load_dataset(datasets_dir / trained_hash[:12])
    except ConfigError:
        return (f"it was trained on dataset {trained_hash[:12]}, which is not under {datasets_dir}, so the "
                f"held-out split of {dataset_hash[:12]} cannot be checked against it")
    was = {p.seed_id: p.split for p in trained}
    moved = sorted({p.seed_id for p in pairs if was.get(p.seed_id, p.split) != p.split})
    if moved:
        return (f"it was trained on dataset {trained_hash[:12]}, and {len(moved)} seed(s) changed split in "
                f"{dataset_hash[:12]} ({', '.join(moved[:5])}): held-out pairs would have been trained on; "
                "build the dataset with the held-out fraction the first one used, or train from scratch")
    return None


def fit_status_decider(settings: Settings, model, tokenizer, pairs, limit: int):
    """The status decider for `model` (tuning/status.py), fitted on up to `limit` of the dataset
    `pairs` held out and corrected to the status shares of all of them; None when the held-out
    pairs cannot fit one (fewer than two statuses: a tiny dataset); logged, never fatal."""
    from core.provision import embedding_model_path
    from retrieval.embed import DenseEmbedder
    from tuning.status import SupportScorer, fit_for_model, status_prior

    scorer = SupportScorer(DenseEmbedder(embedding_model_path(settings), dtype=settings.embedding_dtype))
    heldout = [p for p in pairs if p.split == "heldout"]
    try:
        return fit_for_model(model, tokenizer, heldout, scorer, limit=limit, prior=status_prior(pairs))
    except ValueError as exc:
        logger.warning("no status decider: %s", exc)
        return None


def _manifest(settings: Settings, base, dataset_hash: str, dataset_dir: Path, method: str, config: dict,
              metrics: dict, decider) -> dict:
    """An adapter's manifest fields, for `tune train` and `tune import` alike (the registry adds
    version, date and file hashes)."""
    return {
        "base_model": base.as_dict(), "method": method, "dataset_hash": dataset_hash,
        "prompt_fingerprint": prompt_fingerprint(), "dataset_path": str(dataset_dir),
        "eval_set_hash": sha256_file(settings.gold_set_file) if settings.gold_set_file.exists() else None,
        "config": config,
        "metrics": {**metrics, **({"status_decider": decider.fitted_on} if decider is not None else {})},
        "versions": _library_versions(),
    }


def calibrate_registered(settings: Settings, version: str, *, items: int,
                         registry: AdapterRegistry | None = None,
                         on_stage: Callable[[str], None] = lambda stage: None) -> AdapterRecord:
    """Fit a status decider for a registered adapter and register the pair as a new version (the
    same weights, its manifest noting `calibrated_from`); versions are never changed in place."""
    import shutil

    from tuning.registry import MANIFEST
    from tuning.status import DECIDER_FILE

    registry = registry or AdapterRegistry(settings.adapters_dir)
    on_stage(f"loading {version}")
    record, pairs, tokenizer, model = _load_registered(settings, registry, version)
    on_stage(f"fitting the status decider on up to {items} held-out pairs")
    decider = fit_status_decider(settings, model, tokenizer, pairs, items)
    if decider is None:
        raise ConfigError(f"the held-out pairs of {version}'s dataset cannot fit a status decider (see the log)")
    with registry.staging() as staged:
        for path in record.path.iterdir():
            if path.is_file() and path.name not in (MANIFEST, DECIDER_FILE):
                shutil.copy2(path, staged / path.name)
        decider.save(staged)
        manifest = {k: v for k, v in record.manifest.to_json().items() if k not in ("version", "created_at", "files")}
        manifest["calibrated_from"] = version
        manifest["metrics"] = {**manifest["metrics"], "status_decider": decider.fitted_on}
        return registry.register(staged, manifest)


def import_trained(settings: Settings, folder: Path, *, items: int = 240, registry: AdapterRegistry | None = None,
                   on_stage: Callable[[str], None] = lambda stage: None) -> AdapterRecord:
    """Register an adapter trained elsewhere (`python -m tuning.curve`, e.g. on a GPU machine) after
    checking it was trained on this dataset, base model and prompt; its status decider is fitted
    here, as after `tune train`."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = registry or AdapterRegistry(settings.adapters_dir)
    try:
        info = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} is not an adapter from `python -m tuning.curve` ({exc})") from None
    dataset_dir = settings.datasets_dir / str(info.get("dataset_hash", ""))[:12]
    if not (dataset_dir / "pairs.jsonl").exists():
        raise ConfigError(f"{folder} was trained on dataset {info.get('dataset_hash', '?')[:12]}, which is not in "
                          f"{settings.datasets_dir}; build it here (`policyrag tune build-data`) from the same corpus")
    pairs, dataset_hash = load_dataset(dataset_dir)
    base_dir, base = base_model_identity(settings)
    mismatch = base.mismatch(info.get("base_model") or {}) or (
        dataset_hash != info["dataset_hash"] and "its dataset's files changed") or (
        info.get("prompt_fingerprint") != prompt_fingerprint() and "it was trained with another prompt")
    if mismatch:
        raise ConfigError(f"{folder} cannot be served here: {mismatch}")
    on_stage(f"loading {folder.name} on {base.name}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), folder)
    on_stage(f"fitting the status decider on up to {items} held-out pairs")
    decider = fit_status_decider(settings, model, tokenizer, pairs, items)
    with registry.staging() as staged:
        model.save_pretrained(staged)
        if decider is not None:
            decider.save(staged)
        config = info.get("config", {})
        training = {"step": info.get("step"), "eval_loss": info.get("heldout_loss"),
                    "eval_history": info.get("eval_history", []), "trained_with": info.get("versions", {})}
        manifest = _manifest(settings, base, dataset_hash, dataset_dir, config.get("method", "lora"), config,
                             {"training": training}, decider)
        return registry.register(staged, manifest)


def _load_registered(settings: Settings, registry: AdapterRegistry, version: str):
    """A registered adapter on its base model (fp32), with its dataset's pairs and the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = registry.load(version)
    if not record.manifest.dataset_path:
        raise ConfigError(f"adapter {version} does not say which dataset it was trained on; retrain it instead")
    pairs, _ = load_dataset(Path(record.manifest.dataset_path))
    trained_on = record.manifest.base_model
    base_dir = Path(trained_on.path) if trained_on and trained_on.path else base_model_identity(settings)[0]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), record.path)
    return record, pairs, tokenizer, model


def compare_with_base(model, tokenizer, items, *, max_new_tokens: int, mergeable: bool) -> dict:
    """Generate with the adapter switched off, then on (merged when possible, which is faster);
    same prompt, greedy, no constrained decoding. `model` is a PeftModel; merging consumes it."""
    started = time.perf_counter()
    with model.disable_adapter():
        base_scores = score_outputs(items, generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens))
    generator = model.merge_and_unload() if mergeable else model
    adapter_scores = score_outputs(items, generate_answers(generator, tokenizer, items, max_new_tokens=max_new_tokens))
    return {
        "items": len(items),
        "base": base_scores.summary(),
        "adapter": adapter_scores.summary(),
        "wall_s": round(time.perf_counter() - started, 1),
        "outputs": {"base": base_scores.outputs, "adapter": adapter_scores.outputs},
    }


def compare_registered(settings: Settings, version: str, *, items: int, max_new_tokens: int = 160,
                       registry: AdapterRegistry | None = None) -> dict:
    """Re-run the base-vs-adapter comparison for a registered adapter on its dataset's held-out
    pairs (more items than the quick check at the end of training)."""
    _, pairs, tokenizer, model = _load_registered(settings, registry or AdapterRegistry(settings.adapters_dir), version)
    chosen = pick_compare_items([p for p in pairs if p.split == "heldout"], items)
    return compare_with_base(model, tokenizer, chosen, max_new_tokens=max_new_tokens, mergeable=True)


def _library_versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
