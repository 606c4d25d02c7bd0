"""A GGUF file as a plain transformers model: dequantized to fp32 and rebuilt without the GGUF's
quantization_config, so `save_pretrained` writes a folder that PEFT and vLLM load like any HF model.

Settings-free on purpose (stdlib here; torch and transformers imported when called): besides
`core.provision`, `python -m tuning.curve --gguf` runs it on a bare GPU machine that has torch,
transformers, PEFT and scikit-learn but neither pydantic nor our settings.

    plain = dequantize_gguf(Path("model.Q4_1.gguf"))
    if plain.missing or plain.unexpected: ...
    plain.model.save_pretrained(folder, safe_serialization=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class DequantizedModel(NamedTuple):
    model: Any  # a transformers PreTrainedModel, fp32
    missing: list[str]  # weights the GGUF did not fill (the LM head, tied to the embeddings, aside)
    unexpected: list[str]  # weights in the GGUF that the rebuilt model has no place for


def dequantize_gguf(gguf: Path) -> DequantizedModel:
    """The GGUF's model in fp32, rebuilt from its config, and the weights lost on the way."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses the GGUF-loaded object (it keeps a quantization_config); rebuild a
    # plain model from the config and move the dequantized weights into it.
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    return DequantizedModel(plain, [m for m in missing if "lm_head" not in m], list(unexpected))
