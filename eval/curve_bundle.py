"""The bundle `python -m tuning.curve` trains and measures from (see tuning/curve.py): the
dataset's pairs encoded into token ids, the status prompts and support features of the held-out
pairs (the status decider is refitted on them at each checkpoint) and of the gold items of one
eval run (the passages that run retrieved for each item, and the support features it recorded),
and the base weights' digest. Everything the run needs without the index, the embedder or this
package's dependencies beyond torch, transformers, PEFT and scikit-learn."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.prompt import PromptPassage, build_messages
from core.references import prompt_fingerprint
from core.settings import Settings
from eval.runner import load_run
from tuning.curve import weights_digest, write_rows
from tuning.status import STATUS_PREFIX, pick_fit_pairs


def passages_of(item: dict[str, Any]) -> list[PromptPassage]:
    """The prompt passages an eval item was answered from. Runs recorded before the title was
    (2026-11-30) have only the label, 'Title vN › section …', which gives it back."""
    return [PromptPassage(p["id"], p.get("title") or p["label"].split(" › ")[0].rsplit(" v", 1)[0],
                          tuple(p["section"]), p["text"]) for p in item["passages"]]


def bundle_from_run(settings: Settings, run_id: str | None, out: Path, *, dataset: Path | None = None) -> dict[str, Any]:
    run, items = load_run(settings, run_id)
    return build_bundle(settings, items, out, run_id=run.run_id, dataset=dataset)


def build_bundle(settings: Settings, items: Sequence[dict[str, Any]], out: Path, *, run_id: str,
                 dataset: Path | None = None, fit_items: int = 240) -> dict[str, Any]:
    """`items`: an eval run's item rows (eval/runner.py)."""
    import gzip

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from core.provision import base_model_identity, embedding_model_path
    from retrieval.embed import DenseEmbedder
    from tuning.dataset import latest_dataset, load_dataset
    from tuning.examples import encode_pair
    from tuning.status import SupportScorer, status_prior

    pairs, dataset_hash = load_dataset(dataset or latest_dataset(settings.datasets_dir))
    base_dir, base = base_model_identity(settings)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def status_ids(messages: list[dict[str, str]]) -> list[int]:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + STATUS_PREFIX
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    out.mkdir(parents=True, exist_ok=True)
    examples = []
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair)
        examples.append({"id": pair.id, "split": pair.split, "kind": encoded.kind, "ids": encoded.input_ids,
                         "n_prompt": len(encoded.input_ids) - encoded.response_tokens, "status_at": encoded.status_at})
    write_rows(out, "examples", examples)

    scorer = SupportScorer(DenseEmbedder(embedding_model_path(settings), dtype=settings.embedding_dtype))
    heldout = [p for p in pairs if p.split == "heldout"]
    picked = {p.id for p in pick_fit_pairs(heldout, fit_items)}
    write_rows(out, "fit", [{"id": p.id, "status": p.status, "picked": p.id in picked,
                             "ids": status_ids(build_messages(p.instruction, p.context)),
                             "support": scorer.features(p.instruction, p.context)} for p in heldout])

    gold = []
    for item in items:
        decision = item.get("status_decision")
        row = {"id": item["id"], "forms": item.get("forms", []), "expected": item["expected_status"],
               "run_status": item["status"], "ids": None, "support": None}
        if decision:  # decided by the model and the support features; else decided without the model
            row["ids"] = status_ids(build_messages(item["query"], passages_of(item)))
            row["support"] = [decision["features"]["max_sentence_cosine"], decision["features"]["max_passage_cosine"]]
        gold.append(row)
    write_rows(out, "gold", gold)

    meta = {"dataset_hash": dataset_hash, "run_id": run_id, "base_model": base.as_dict(),
            "prompt_fingerprint": prompt_fingerprint(), "status_prior": status_prior(pairs),
            "weights_digest": weights_digest(load_file(str(base_dir / "model.safetensors"))),
            "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            "vocab": {i: tokenizer.decode([i]) for i in range(len(tokenizer))}}
    with gzip.open(out / "meta.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(meta, handle)
    return {"examples": len(examples), "fit": len(heldout), "gold": len(gold), "run_id": run_id,
            "dataset_hash": dataset_hash, "bytes": sum(f.stat().st_size for f in out.iterdir())}
