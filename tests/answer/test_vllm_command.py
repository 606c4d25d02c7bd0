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
