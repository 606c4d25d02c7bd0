"""answer/backends.py: what an adapter is served as, and the check of its files before a load."""

from __future__ import annotations

import hashlib

import pytest

from answer.backends import AdapterRef, AdapterUnavailable


def _adapter(tmp_path, weights: bytes = b"weights") -> AdapterRef:
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)
    (tmp_path / "adapter_config.json").write_text("{}")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    return AdapterRef("v3", tmp_path, files)


def test_the_served_name_carries_the_weights_hash(tmp_path):
    ref = _adapter(tmp_path)
    assert ref.served_name == "v3-" + hashlib.sha256(b"weights").hexdigest()[:12]
    assert AdapterRef("v3", tmp_path).served_name == "v3"  # no recorded files: the bare version


def test_files_changed_or_missing_since_registration_are_refused_before_a_load(tmp_path):
    ref = _adapter(tmp_path)
    ref.verify()
    (tmp_path / "adapter_model.safetensors").write_bytes(b"other weights")
    with pytest.raises(AdapterUnavailable, match="adapter_model.safetensors does not match its recorded hash"):
        ref.verify()
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterUnavailable, match="cannot be read"):
        ref.verify()


def test_each_embedded_model_server_gets_its_own_random_key_unless_one_is_configured(tmp_path):
    from pathlib import Path

    from answer.vllm_server import VllmServer
    from core.settings import Settings

    settings = Settings(data_dir=tmp_path)
    first, second = VllmServer(Path("model"), settings), VllmServer(Path("model"), settings)
    assert len(first.api_key) >= 32 and first.api_key != second.api_key
    configured = Settings(data_dir=tmp_path, vllm_api_key="k" * 40)
    assert VllmServer(Path("model"), configured).api_key == "k" * 40
