"""core/durable.py: state files are replaced whole and durably (issue 15 #13)."""

from __future__ import annotations

import os
import stat

import core.durable as durable


def test_a_state_file_is_replaced_whole_fsynced_and_its_folder_too(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    path.write_text('{"old": true}\n')
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:  # the real fsync, recording what it was called on
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    durable.write_atomic(path, '{"new": true}\n', mode=0o600)
    assert path.read_text() == '{"new": true}\n'
    assert synced == [str(tmp_path / ".registry.json.tmp"), str(tmp_path)]  # the data, then the rename
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]  # no temporary file left


def test_the_registry_and_the_key_store_write_through_it(tmp_path, monkeypatch):
    from answer.auth import ApiKeyStore
    from tuning.registry import AdapterRegistry

    written: list[str] = []
    real = durable.write_atomic
    monkeypatch.setattr("tuning.registry.write_atomic", lambda p, t, **k: (written.append(p.name), real(p, t, **k)))
    monkeypatch.setattr("answer.auth.write_atomic", lambda p, t, **k: (written.append(p.name), real(p, t, **k)))
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.record({"action": "note"})
    ApiKeyStore(tmp_path / "auth" / "api_keys.json").create("alice")
    assert written == ["registry.json", "api_keys.json"]
    assert registry.events()[-1]["action"] == "note"
