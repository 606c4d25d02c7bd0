"""Merged weights (base + adapter) for serving without LoRA overhead."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from tuning.registry import AdapterRecord


def export_merged(record: AdapterRecord, out: Path) -> Path:
    """Write a plain HF model folder (safetensors + tokenizer) with the adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(record.manifest.base_model.path)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, record.path).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    provenance = {"merged_from": record.version, "adapter_manifest": record.manifest.to_json()}
    (tmp / "policyrag-merged.json").write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m tuning.export ADAPTERS_DIR VERSION OUT`: the registered, hash-checked adapter
    merged into OUT. The answer service runs it as a child process, so that merging (the base
    model loaded in fp32, PEFT imported) never adds to the service's own memory."""
    import sys

    from tuning.registry import AdapterRegistry

    adapters_dir, version, out = argv if argv is not None else sys.argv[1:]
    print(export_merged(AdapterRegistry(Path(adapters_dir)).load(version), Path(out)))


if __name__ == "__main__":
    main()
