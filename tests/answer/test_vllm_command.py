"""answer/vllm_server.py: what the embedded vLLM servers are started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from answer.vllm_server import vllm_command
from core.settings import Settings


def _option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_ngram_speculative_decoding_is_off_unless_asked_for(tmp_path):
    assert "--speculative-config" not in vllm_command(Path("/m"), Settings(data_dir=tmp_path), port=1)
    cmd = vllm_command(Path("/m"), Settings(data_dir=tmp_path, vllm_ngram_speculative_tokens=5), port=1)
    config = json.loads(_option(cmd, "--speculative-config"))
    assert config["method"] == "ngram" and config["num_speculative_tokens"] == 5
    assert "--enable-lora" in cmd  # the rest of the command is as before
    with pytest.raises(ValidationError, match="vllm_ngram_speculative_tokens"):
        Settings(data_dir=tmp_path, vllm_ngram_speculative_tokens=-1)


def test_only_the_run_time_lora_server_is_started_with_lora_and_a_merged_one_is_compiled_unless_turned_off(tmp_path):
    """A merged model's server never loads an adapter; `--enable-lora` would turn vLLM CPU's
    compile off (1.31x slower answers measured, answer/vllm_server.py)."""
    settings = Settings(data_dir=tmp_path)
    lora = vllm_command(Path("/m"), settings, port=1)
    assert _option(lora, "--max-loras") == str(settings.vllm_max_loras) and "-O0" not in lora
    merged = vllm_command(Path("/m"), settings, port=1, lora=False)
    assert not {"--enable-lora", "--max-loras", "--max-lora-rank", "-O0"} & set(merged)
    assert _option(merged, "--model") == "/m" and _option(merged, "--dtype") == "bfloat16"
    eager = vllm_command(Path("/m"), Settings(data_dir=tmp_path, vllm_merged_compile=False), port=1, lora=False)
    assert "-O0" in eager and "--enable-lora" not in eager
    assert "-O0" not in vllm_command(Path("/m"), Settings(data_dir=tmp_path, vllm_merged_compile=False), port=1)
