"""The learning curve: train with the product's loop (`tuning.trainer`) on a pre-encoded bundle
and, at each checkpoint, measure the held-out loss, the status decider refitted on the held-out
pairs, and the status it decides for each gold item (decided as the service decides it: the
model's status log-probabilities plus the embedder's support features, recorded by an eval run).

Runs where only torch, transformers, PEFT and scikit-learn are installed, such as a GPU machine
with no access to the index or the package registries:

    policyrag eval curve-bundle RUN_ID BUNDLE          # here: pairs encoded, gold prompts built
    python -m tuning.curve BUNDLE OUT --gguf FILE      # there: OUT/curve.json, OUT/best, OUT/final
    policyrag tune import OUT/best                     # here: registered (hash-checked), decider fitted

The gold items are only measured, never trained on: training reads `examples` alone. Which
checkpoint to keep is chosen by held-out loss (held out by seed), never by the gold figures.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.gguf import dequantize_gguf
from core.status_metrics import status_precision_recall
from tuning.batching import IGNORE, Example
from tuning.config import TrainConfig
from tuning.status import STATUSES, fit_decider, status_logprobs, top_by_text
from tuning.trainer import _lora_state, evaluate_heldout, load_for_training, train_loop

BUNDLE_FILES = ("examples", "fit", "gold")


def read_rows(bundle: Path, name: str) -> list[dict[str, Any]]:
    with gzip.open(bundle / f"{name}.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_rows(bundle: Path, name: str, rows: Sequence[dict[str, Any]]) -> None:
    with gzip.open(bundle / f"{name}.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted fp32 tensors (the tied LM head left out): the same base weights
    give the same digest whether read from our safetensors or dequantized from the GGUF."""
    h = hashlib.sha256()
    for name in sorted(state):
        if "lm_head" not in name:
            h.update(name.encode())
            h.update(state[name].detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def examples_of(rows: Sequence[dict[str, Any]], split: str, max_len: int) -> list[Example]:
    return [Example(r["id"], r["ids"], [IGNORE] * r["n_prompt"] + r["ids"][r["n_prompt"]:], r["kind"],
                    r.get("status_at", -1))  # bundles before status_at: held-out loss only
            for r in rows if r["split"] == split and len(r["ids"]) <= max_len]


def gold_metrics(decided: Sequence[str], gold: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Status accuracy (all items and the original ones, without `forms`) and per-status
    precision/recall, as `eval` reports them."""
    expected = [g["expected"] for g in gold]
    original = [i for i, g in enumerate(gold) if not g.get("forms")]
    return {
        "status_accuracy": round(sum(d == e for d, e in zip(decided, expected)) / max(1, len(gold)), 4),
        "original_status_accuracy": round(sum(decided[i] == expected[i] for i in original) / max(1, len(original)), 4),
        **{f"{s}_precision_recall": list(status_precision_recall(expected, decided, s)) for s in STATUSES},
    }


class Curve:
    """One run: `Curve(bundle, out, base_dir).run(epochs=3, checks=12)`."""

    def __init__(self, bundle: Path, out: Path, base_dir: Path, *, say: Callable[[str], None] = print) -> None:
        self.out, self.base_dir, self.say = out, base_dir, say
        self.meta = json.loads(gzip.open(bundle / "meta.json.gz", "rt", encoding="utf-8").read())
        self.vocab = {int(k): v for k, v in self.meta["vocab"].items()}
        self.examples, self.fit, self.gold = (read_rows(bundle, n) for n in BUNDLE_FILES)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.points: list[dict[str, Any]] = []
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def run(self, *, epochs: float, checks: int, time_budget_s: float | None = None,
            batch_size: int = 4, learning_rate: float = 1e-3) -> dict[str, Any]:
        started = time.perf_counter()
        train = examples_of(self.examples, "train", 1536)
        self.heldout = examples_of(self.examples, "heldout", 1536)
        epoch_steps = len(train) / batch_size
        steps = max(1, round(epochs * epoch_steps))
        self.config = TrainConfig(
            max_steps=steps, batch_size=batch_size, micro_batch_size=batch_size, learning_rate=learning_rate,
            eval_every=max(1, steps // max(1, checks)), eval_examples=len(self.heldout), patience=10**9,
            time_budget_s=time_budget_s, compare_items=0,
        )
        self.model, _ = load_for_training(self.base_dir, self.config)
        self.model.to(self.device)
        self.epoch_steps = epoch_steps
        self.say(f"{len(train)} train / {len(self.heldout)} held-out pairs, {steps} steps "
                 f"({epochs} epochs) on {self.device}, a checkpoint every {self.config.eval_every}")
        self.checkpoint(0)
        result, _ = train_loop(self.model, train, self.heldout, self.config, pad_id=self.meta["pad_id"],
                               on_step=lambda info: info.eval_loss is not None and self.checkpoint(
                                   info.step, (info.eval_loss, info.eval_status_accuracy)))
        # best: the held-out status accuracy, then the loss (what train_loop keeps; README, session 7)
        kept = {"final": self.points[-1]["step"], "best": max(
            self.points[1:] or self.points,
            key=lambda p: (p["heldout_status_accuracy"] if p["heldout_status_accuracy"] is not None else -1.0,
                           -p["heldout_loss"]))["step"]}
        for name, step in kept.items():
            self.save_adapter(self.out / name, step)
        summary = {
            "points": self.points, "kept": kept, "dataset_hash": self.meta["dataset_hash"],
            "config": self.config.to_json(), "wall_s": round(time.perf_counter() - started, 1),
            "training": {"steps": result.steps, "tokens": result.tokens, "tokens_per_s": round(result.tokens_per_s, 1),
                         "train_loss": round(result.train_loss, 4), "stopped": result.stopped},
            "versions": self.versions(),
        }
        (self.out / "curve.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def checkpoint(self, step: int, heldout: tuple[float, float | None] | None = None) -> None:
        """Record a point; `heldout` is train_loop's own measure on the whole held-out split (its
        eval set here), so it is not computed twice."""
        point: dict[str, Any] = {"step": step, "epoch": round(step / self.epoch_steps, 3)}
        loss, accuracy = heldout or evaluate_heldout(self.model, self.heldout, self.config, pad_id=self.meta["pad_id"])
        point["heldout_loss"], point["heldout_status_accuracy"] = round(loss, 4), accuracy
        fit_lp = self.status_lp([r["ids"] for r in self.fit])
        gold_lp = iter(self.status_lp([g["ids"] for g in self.gold if g["ids"]]))
        decider = fit_decider([(lp + r["support"], r["status"]) for lp, r in zip(fit_lp, self.fit) if r["picked"]],
                              prior=self.meta.get("status_prior"))  # bundles before it: uncorrected
        decided, argmax = [], []
        for g in self.gold:
            lp = next(gold_lp) if g["ids"] else None
            decided.append(decider.decide(lp + g["support"]) if lp else g["run_status"])
            argmax.append(STATUSES[max(range(3), key=lp.__getitem__)] if lp else g["run_status"])
        point["decider_fit"] = decider.fitted_on
        point["gold"] = gold_metrics(decided, self.gold)
        point["gold_model_argmax"] = gold_metrics(argmax, self.gold)
        point["decider"] = decider.to_json()
        self.points.append(point)
        self.states[step] = {k: v.detach().to("cpu", torch.bfloat16) for k, v in _lora_state(self.model).items()}
        self.say(json.dumps({k: point[k] for k in ("step", "epoch", "heldout_loss", "heldout_status_accuracy", "gold")}))
        (self.out / "curve.json").write_text(json.dumps({"points": self.points}, indent=1), encoding="utf-8")
        self.model.train()

    @torch.no_grad()
    def status_lp(self, prompts: Sequence[list[int]], batch: int = 16) -> list[list[float]]:
        """Per prompt (ids ending with the status prefix), the log-probability of each status."""
        self.model.eval()
        out: list[list[float]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), self.meta["pad_id"], dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(rows):
                ids[r, :len(prompts[i])], mask[r, :len(prompts[i])] = torch.tensor(prompts[i]), 1
            with torch.autocast(device_type=self.device, dtype=torch.bfloat16):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            last = logits[torch.arange(len(rows)), (mask.sum(1) - 1).to(self.device)].float()
            values, tokens = torch.log_softmax(last, -1).topk(20)
            for r, i in enumerate(rows):
                top = top_by_text((self.vocab[t], v) for v, t in zip(values[r].tolist(), tokens[r].tolist()))
                out[i] = status_logprobs(top)
        return out

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "peft": _version("peft"), "transformers": _version("transformers"),
                "device": torch.cuda.get_device_name() if self.device == "cuda" else "cpu"}

    def save_adapter(self, folder: Path, step: int) -> None:
        """PEFT's layout (adapter_config.json, adapter_model.safetensors), bf16: what vLLM serves
        in, and half the size (a GPU machine's results come back through a size limit)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.model.peft_config["default"].save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in self.states[step].items()}, str(folder / "adapter_model.safetensors"))
        point = next(p for p in self.points if p["step"] == step)
        (folder / "training.json").write_text(json.dumps(
            {"step": step, "heldout_loss": point["heldout_loss"], "config": self.config.to_json(),
             "eval_history": [[p["step"], p["heldout_loss"], p["heldout_status_accuracy"]] for p in self.points],
             "versions": self.versions(),
             **{k: self.meta[k] for k in ("dataset_hash", "base_model", "prompt_fingerprint")}}),
            encoding="utf-8")


def base_from_gguf(gguf: Path, target: Path) -> Path:
    """The plain fp32 model dequantized from the GGUF (core.gguf, which core.provision uses too).
    A lost weight changes the weights digest, which main() checks before training."""
    dequantize_gguf(gguf).model.save_pretrained(target, safe_serialization=True)
    return target


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", type=Path, help="the base model folder (safetensors)")
    source.add_argument("--gguf", type=Path, help="the base model's GGUF file (dequantized here)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--checks", type=int, default=12, help="checkpoints over the run")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; stops early, keeps the points")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.txt").open("a", encoding="utf-8")

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    import tempfile

    base = args.base or base_from_gguf(args.gguf, Path(tempfile.mkdtemp(prefix="policyrag-base-")))
    curve = Curve(args.bundle, args.out, base, say=say)
    from safetensors.torch import load_file

    digest = weights_digest(load_file(str(base / "model.safetensors")))
    if digest != curve.meta["weights_digest"]:
        say(f"base weights digest {digest[:16]} is not the bundle's {curve.meta['weights_digest'][:16]}: "
            "another base model; the adapter would not match the one served")
        return 2
    summary = curve.run(epochs=args.epochs, checks=args.checks, time_budget_s=args.time_budget)
    say(f"done: {summary['training']['steps']} steps in {summary['wall_s']} s; kept {summary['kept']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
