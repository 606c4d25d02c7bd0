"""`policyrag bench tuning`: our trainer vs the baseline a user would write first (HF `Trainer`
+ PEFT LoRA, fp32, padded batches, full-vocabulary logits), same examples, same steps, each in
its own process so peak memory is its own.

Throughput counts real tokens (padding excluded) over the time spent in training steps.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from core.settings import get_settings


def _examples(dataset: Path, n: int, tokenizer):
    from tuning.dataset import load_dataset
    from tuning.examples import encode_pair

    pairs, _ = load_dataset(dataset)
    train = [p for p in pairs if p.split == "train"]
    random.Random(0).shuffle(train)
    return [encode_pair(tokenizer, p) for p in train[:n]]


def _worker(kind: str, dataset: Path, steps: int, batch_size: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from core.provision import base_model_identity
    from tuning.config import TrainConfig
    from tuning.trainer import load_for_training, train_loop

    settings = get_settings()
    base_dir, _ = base_model_identity(settings)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples = _examples(dataset, steps * batch_size, tokenizer)
    tokens = sum(len(e.input_ids) for e in examples)
    config = TrainConfig(max_steps=steps, batch_size=batch_size, eval_examples=0, compare_items=0, dropout=0.0)
    model, _ = load_for_training(base_dir, config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if kind == "ours":
        started = time.perf_counter()
        result, _ = train_loop(model, examples, [], config, pad_id=pad)
        wall, loss = time.perf_counter() - started, result.train_loss
    else:
        import tempfile

        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in examples]
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps,
                learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, lr_scheduler_type="cosine",
                max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                seed=config.seed, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
            )
            tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
            trainer = Trainer(model=model, args=args, train_dataset=rows,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
            started = time.perf_counter()
            output = trainer.train()
            wall, loss = time.perf_counter() - started, output.training_loss
    return {
        "kind": kind, "steps": steps, "batch_size": batch_size, "examples": len(examples), "tokens": tokens,
        "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1), "train_loss": round(float(loss), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }


def run_tuning_benchmark(*, steps: int = 12, batch_size: int = 4, repeats: int = 1, dataset: Path | None = None,
                         console=None) -> dict:
    from tuning.dataset import latest_dataset

    folder = dataset or latest_dataset(get_settings().datasets_dir)
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    for repeat in range(repeats):
        for kind in ("baseline", "ours"):  # alternate, so drift on a shared machine hits both
            if console:
                console.print(f"[dim]run {repeat + 1}/{repeats}: {kind} ({steps} steps x {batch_size})[/]")
            proc = subprocess.run(
                [sys.executable, "-m", "eval.bench_tuning", kind, str(folder), str(steps), str(batch_size)],
                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-2000:]}")
            runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {
        kind: {
            "tokens_per_s": median(r["tokens_per_s"] for r in rs),
            "wall_s": median(r["wall_s"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "train_loss": median(r["train_loss"] for r in rs),
        }
        for kind, rs in runs.items()
    }
    summary["speedup"] = round(summary["ours"]["tokens_per_s"] / summary["baseline"]["tokens_per_s"], 2)
    return {"dataset": str(folder), "steps": steps, "batch_size": batch_size, "repeats": repeats,
            "tokens": runs["ours"][0]["tokens"], "summary": summary, "runs": runs}


def print_tuning_results(results: dict, console) -> None:
    from rich.table import Table

    s = results["summary"]
    table = Table(title=f"tuning: {results['steps']} steps x {results['batch_size']} examples "
                        f"({results['tokens']} tokens), median of {results['repeats']}")
    for column in ("trainer", "tokens/s", "train wall s", "peak RSS MiB", "train loss"):
        table.add_column(column)
    for kind, label in (("baseline", "HF Trainer + PEFT (fp32, padded)"), ("ours", "policyrag loop")):
        table.add_row(label, f"{s[kind]['tokens_per_s']:.0f}", f"{s[kind]['wall_s']:.1f}",
                      str(s[kind]["peak_rss_mib"]), f"{s[kind]['train_loss']:.3f}")
    console.print(table)
    console.print(f"speed-up: {s['speedup']}x tokens/s (target >= 1.5x); "
                  f"peak memory ours {s['ours']['peak_rss_mib']} MiB (target < 6144)")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    kind, folder, steps, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(_worker(kind, folder, steps, batch)))
