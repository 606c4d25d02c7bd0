"""The registry: versions appear whole or not at all, one adapter is live, rollback is one
call, and a corrupted adapter is refused."""

import json
import multiprocessing

import pytest

from tuning.registry import (
    AdapterCorrupted,
    AdapterNotFound,
    AdapterRegistry,
    PromotionRefused,
    RegistryError,
)


def _register(registry, payload=b"weights"):
    with registry.staging() as folder:
        (folder / "adapter_config.json").write_text(json.dumps({"r": 16}))
        (folder / "adapter_model.safetensors").write_bytes(payload)
        return registry.register(folder, {"dataset_hash": "d" * 64, "metrics": {}})


def test_registered_adapters_get_sequential_versions_and_hashed_files(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    first, second = _register(registry), _register(registry, b"other")
    assert (first.version, second.version) == ("v1", "v2")
    assert set(first.manifest.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert registry.load("v2").manifest.files == second.manifest.files
    assert not list((tmp_path / "adapters" / ".staging").iterdir())


def test_promote_then_rollback_returns_to_the_previous_adapter(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    for _ in range(3):
        _register(registry)
    assert registry.promoted() is None
    registry.promote("v1")
    registry.promote("v3")
    assert registry.promoted_version() == "v3"
    assert registry.rollback().version == "v1" and registry.promoted_version() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert [e["action"] for e in registry.events()][-3:] == ["promote", "promote", "rollback"]


def test_a_run_that_fails_inside_staging_registers_nothing_and_keeps_the_live_adapter(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    _register(registry)
    registry.promote("v1")
    with pytest.raises(KeyboardInterrupt):
        with registry.staging() as folder:
            (folder / "adapter_config.json").write_text("{}")
            raise KeyboardInterrupt  # Ctrl-C half way through training
    assert registry.versions() == ["v1"] and registry.promoted_version() == "v1"
    assert not list((tmp_path / "adapters" / ".staging").iterdir())


def test_a_corrupted_adapter_is_refused_on_load_promote_and_rollback(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    _register(registry)
    _register(registry)
    registry.promote("v1")
    registry.promote("v2")
    (tmp_path / "adapters" / "v1" / "adapter_model.safetensors").write_bytes(b"flipped bits")
    with pytest.raises(AdapterCorrupted, match="v1: adapter_model.safetensors does not match"):
        registry.load("v1")
    with pytest.raises(AdapterCorrupted):
        registry.rollback()
    assert registry.promoted_version() == "v2"  # unchanged by the refused rollback
    (tmp_path / "adapters" / "v2" / "adapter_config.json").unlink()
    with pytest.raises(AdapterCorrupted, match="adapter_config.json is missing"):
        registry.promote("v2")


def test_unknown_version_lists_the_known_ones(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    _register(registry)
    with pytest.raises(AdapterNotFound, match=r"'v7'.*known: v1"):
        registry.load("v7")


def test_a_failing_gate_refuses_promotion_unless_forced_and_the_force_is_recorded(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    _register(registry)
    gate = lambda record: ["refusal recall 0.80 < 0.95"]  # noqa: E731
    with pytest.raises(PromotionRefused, match="refusal recall 0.80 < 0.95"):
        registry.promote("v1", gate=gate)
    assert registry.promoted_version() is None
    registry.promote("v1", gate=gate, force=True, reason="legal sign-off 2026-11-28")
    event = registry.events()[-1]
    assert event["forced"] is True and event["reason"] == "legal sign-off 2026-11-28"
    assert event["gate_failures"] == ["refusal recall 0.80 < 0.95"]


def _register_in_process(root):
    _register(AdapterRegistry(root))


def test_concurrent_registrations_get_distinct_versions(tmp_path):
    root = tmp_path / "adapters"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_in_process, args=(root,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert AdapterRegistry(root).versions() == ["v1", "v2", "v3", "v4"]


def test_rollback_refuses_an_adapter_the_running_code_cannot_serve(tmp_path):
    """Issue 15 #13: rollback checked the files but not the base model or the prompt, so it could
    switch to an adapter trained for another answer format (every answer then fails)."""
    from core.provision import BaseModelIdentity
    from core.references import prompt_fingerprint

    registry = AdapterRegistry(tmp_path)
    old, new = _register(registry), _register(registry, b"other")
    manifest_path = old.path / "policyrag-adapter.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "prompt_fingerprint": "0c95626697cc6f8b"}))  # the quote-copying format
    registry.promote(old.version, force=True, reason="test")
    registry.promote(new.version, force=True, reason="test")
    base = BaseModelIdentity(name="SmolLM2-135M-Instruct", path="/m", sha256="a" * 64)
    with pytest.raises(RegistryError, match=f"cannot roll back to {old.version}: it was trained with another prompt"):
        registry.rollback(servable=lambda record: record.manifest.incompatibility(base, prompt_fingerprint()))
    assert registry.promoted_version() == new.version
