"""core/gguf.py with a tiny Llama standing in for the GGUF loader (the packaged GGUF itself is
converted by core.provision for every test that needs the base model, and by
tests/tuning/test_curve.py through `tuning.curve.base_from_gguf`)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from core.gguf import dequantize_gguf

GGUF = Path("/models/tiny.Q4_1.gguf")


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)


class GgufLoaded:
    """What transformers returns for `gguf_file=`: dequantized weights (only the state is read)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)


@pytest.fixture
def gguf(monkeypatch) -> SimpleNamespace:
    """The fake GGUF's weights (a tiny Llama's, the tied LM head not stored, as in a GGUF) and the
    loader calls made."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in AutoModelForCausalLM.from_config(tiny_config()).state_dict().items()
             if k != "lm_head.weight"}
    calls = []

    def load_model(folder, *, gguf_file, dtype):
        calls.append(("model", folder, gguf_file, dtype))
        return GgufLoaded(state)

    def load_config(folder, *, gguf_file):
        calls.append(("config", folder, gguf_file))
        config = tiny_config()
        config.quantization_config = {"quant_method": "gguf"}  # what makes save_pretrained refuse
        return config

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_model)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", load_config)
    return SimpleNamespace(state=state, calls=calls)


def test_the_rebuilt_model_holds_the_dequantized_weights_and_saves_like_any_hf_model(gguf, tmp_path):
    from safetensors.torch import load_file

    plain = dequantize_gguf(GGUF)
    assert (plain.missing, plain.unexpected) == ([], [])  # the tied LM head is not counted as lost
    assert gguf.calls == [("model", "/models", "tiny.Q4_1.gguf", torch.float32), ("config", "/models", "tiny.Q4_1.gguf")]
    assert not hasattr(plain.model.config, "quantization_config")
    weights = plain.model.state_dict()
    assert all(torch.equal(weights[k], v) and weights[k].dtype == torch.float32 for k, v in gguf.state.items())
    assert torch.equal(weights["lm_head.weight"], gguf.state["model.embed_tokens.weight"])
    plain.model.save_pretrained(tmp_path, safe_serialization=True)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in gguf.state.items())


def test_weights_the_gguf_lacks_or_the_model_cannot_take_are_named(gguf):
    del gguf.state["model.layers.0.mlp.up_proj.weight"]
    gguf.state["model.layers.9.extra.weight"] = torch.zeros(2)
    plain = dequantize_gguf(GGUF)
    assert plain.missing == ["model.layers.0.mlp.up_proj.weight"]
    assert plain.unexpected == ["model.layers.9.extra.weight"]
