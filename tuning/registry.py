"""The adapter registry: versioned adapters with manifests, one promoted at a time.

Layout under `data/adapters/`:
    v3/adapter_model.safetensors, v3/adapter_config.json, v3/policyrag-adapter.json (manifest)
    registry.json   {"promoted": [..., "v2", "v3"], "events": [...]}   (a stack: last = live)
    .staging/       training runs in progress; never read as adapters

A training run writes into `.staging/<run>` and `register` moves the finished folder into place
in one rename, so an interrupted or failed run leaves no adapter and never touches `promoted`.
Every file's sha256 is in the manifest and checked on load.

Usage:
    registry = AdapterRegistry(settings.adapters_dir)
    with registry.staging() as folder:
        ...write the adapter files into folder...
        record = registry.register(folder, manifest)
    registry.promote(record.version)
    registry.rollback()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.digest import sha256_file
from core.durable import write_atomic
from core.errors import PolicyRagError
from core.provision import BaseModelIdentity

MANIFEST = "policyrag-adapter.json"
_VERSION = re.compile(r"^v(\d+)$")


class TrainedOn(BaseModel):
    """The base model an adapter was trained on (core/provision.py's `BaseModelIdentity`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    path: str | None = None
    sha256: str | None = None  # of the weights
    source_sha256: str | None = None


class AdapterManifest(BaseModel):
    """`policyrag-adapter.json`: what an adapter is, what it was trained on and with, and the
    hash of each of its files. Validated when written and when read."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str
    created_at: str = ""
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")
    base_model: TrainedOn | None = None
    method: Literal["lora", "qlora"] | None = None
    dataset_hash: str | None = None
    dataset_path: str | None = None
    prompt_fingerprint: str | None = None
    eval_set_hash: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="tuning/config.py's TrainConfig")
    metrics: dict[str, Any] = Field(default_factory=dict, description="training curve and base-vs-adapter compare")
    versions: dict[str, str] = Field(default_factory=dict, description="library versions")
    calibrated_from: str | None = Field(None, description="the version whose weights these are, with a new status decider")
    resumed_from: str | None = Field(None, description="the version whose weights this training started from")
    broken: bool = Field(False, description="listed, but its manifest is missing")

    def incompatibility(self, base_model: BaseModelIdentity | None, fingerprint: str) -> str | None:
        """Why an adapter cannot be served by this code (None: it can): trained on another base
        model, or on another prompt or answer format (`core.references.prompt_fingerprint`)."""
        trained_on = self.base_model.model_dump() if self.base_model else {}
        mismatch = base_model.mismatch(trained_on) if base_model is not None else None
        if mismatch:
            return f"was trained on {trained_on.get('name')}, not on the served base model {base_model.name} ({mismatch})"
        if self.prompt_fingerprint not in (None, fingerprint):
            return (f"was trained with another prompt or answer format (fingerprint {self.prompt_fingerprint}, "
                    f"now {fingerprint})")
        return None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"broken"} if not self.broken else None)


class RegistryError(PolicyRagError):
    code = "registry"
    http_status = 503  # the registry cannot give the adapter to serve


class AdapterNotFound(RegistryError):
    code = "adapter_not_found"


class AdapterCorrupted(RegistryError):
    code = "adapter_corrupted"


class PromotionRefused(RegistryError):
    code = "promotion_refused"
    http_status = 409


@dataclass(frozen=True)
class AdapterRecord:
    version: str
    path: Path
    manifest: AdapterManifest

    @property
    def created_at(self) -> str:
        return self.manifest.created_at


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder for a training run; removed on exit whatever happened."""
        folder = self.root / ".staging" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def register(self, staged: Path, manifest: dict[str, Any]) -> AdapterRecord:
        """Hash the staged files, write the manifest (`manifest`'s fields plus version, date and
        file hashes; an `AdapterManifest`), move the folder in as the next version."""
        files = {p.name: sha256_file(p) for p in sorted(staged.iterdir()) if p.is_file() and p.name != MANIFEST}
        if "adapter_config.json" not in files:
            raise RegistryError(f"{staged} holds no adapter (adapter_config.json missing); nothing registered")
        with self._lock():
            version = f"v{max(self._numbers(), default=0) + 1}"
            full = AdapterManifest.model_validate({
                **manifest,
                "version": version,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": files,
            })
            (staged / MANIFEST).write_text(json.dumps(full.to_json(), indent=2, sort_keys=True) + "\n")
            target = self.root / version
            os.replace(staged, target)  # one rename: the version appears complete or not at all
            staged.mkdir()  # the staging context removes it again
            state = self._state()
            self._write_state(_with_event(state, {"action": "register", "version": version}))
        return AdapterRecord(version, target, full)

    def promote(self, version: str, *, force: bool = False, reason: str | None = None,
                gate: Callable[[AdapterRecord], list[str]] | None = None) -> AdapterRecord:
        """Make `version` the live adapter. `gate` returns the reasons to refuse (issue: eval
        gate); `force` overrides them and is recorded with `reason`."""
        record = self.load(version)
        failures = gate(record) if gate else []
        if failures and not force:
            raise PromotionRefused(
                f"{version} may not be promoted: " + "; ".join(failures) + " (use --force to override; it is recorded)"
            )
        with self._lock():
            state = self._state()
            if state["promoted"] and state["promoted"][-1] == version:
                return record
            state["promoted"].append(version)
            self._write_state(_with_event(state, {"action": "promote", "version": version,
                                                  "forced": bool(force and failures),
                                                  "gate_failures": failures, "reason": reason}))
        return record

    def rollback(self, *, servable: Callable[[AdapterRecord], str | None] | None = None) -> AdapterRecord:
        """Return to the previously promoted adapter, verified before the switch: its files, and
        with `servable` (which says why it cannot be served, or None) that the running code can
        serve it (same base model and prompt)."""
        with self._lock():
            state = self._state()
            if len(state["promoted"]) < 2:
                raise RegistryError("nothing to roll back to: fewer than two adapters were ever promoted")
            previous = state["promoted"][-2]
            record = self.load(previous)
            problem = servable(record) if servable else None
            if problem:
                raise RegistryError(f"cannot roll back to {previous}: it {problem}; {state['promoted'][-1]} stays live")
            current = state["promoted"].pop()
            self._write_state(_with_event(state, {"action": "rollback", "version": previous, "from": current}))
        return record

    def withdraw(self, version: str, *, reason: str) -> str | None:
        """Take `version` out of the promotion history (it can no longer be served, e.g. it was
        trained for another answer format), so neither the live adapter nor a rollback can be
        it; the event is recorded with `reason`. Returns the version live afterwards."""
        with self._lock():
            state = self._state()
            if version not in state["promoted"]:
                return state["promoted"][-1] if state["promoted"] else None
            state["promoted"] = [v for v in state["promoted"] if v != version]
            self._write_state(_with_event(state, {"action": "withdraw", "version": version, "reason": reason}))
            return state["promoted"][-1] if state["promoted"] else None

    def record(self, event: dict[str, Any]) -> None:
        """Add an event (e.g. a rollback drill's outcome) to the registry's log."""
        with self._lock():
            self._write_state(_with_event(self._state(), event))

    # -- reading ----------------------------------------------------------------------------

    def versions(self) -> list[str]:
        return [f"v{n}" for n in sorted(self._numbers())]

    def list(self) -> list[AdapterRecord]:
        out = []
        for version in self.versions():
            path = self.root / version / MANIFEST
            try:
                manifest = AdapterManifest.model_validate_json(path.read_text())
            except (OSError, ValidationError):
                manifest = AdapterManifest(version=version, broken=True)
            out.append(AdapterRecord(version, self.root / version, manifest))
        return out

    def promoted_version(self) -> str | None:
        stack = self._state()["promoted"]
        return stack[-1] if stack else None

    def promotion_history(self) -> list[str]:
        """Promoted versions, oldest first; the last is live, the one before is the rollback target."""
        return list(self._state()["promoted"])

    def promoted(self) -> AdapterRecord | None:
        version = self.promoted_version()
        return self.load(version) if version else None

    def events(self) -> list[dict[str, Any]]:
        return self._state()["events"]

    def load(self, version: str) -> AdapterRecord:
        """The adapter with its integrity checked: every file present with its recorded sha256."""
        folder = self.root / version
        if not _VERSION.match(version) or not folder.is_dir():
            known = ", ".join(self.versions()) or "none"
            raise AdapterNotFound(f"no adapter {version!r} in {self.root} (known: {known})")
        try:
            manifest = AdapterManifest.model_validate_json((folder / MANIFEST).read_text())
        except (OSError, ValidationError) as exc:
            raise AdapterCorrupted(f"adapter {version}: manifest unreadable ({exc}); retrain or restore it") from None
        verify_files(version, folder, manifest.files)
        return AdapterRecord(version, folder, manifest)

    # -- state ------------------------------------------------------------------------------

    def _numbers(self) -> list[int]:
        if not self.root.exists():
            return []
        return [int(m.group(1)) for p in self.root.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]

    def _state(self) -> dict[str, Any]:
        path = self.root / "registry.json"
        if not path.exists():
            return {"promoted": [], "events": []}
        return json.loads(path.read_text())

    def _write_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.root / "registry.json", json.dumps(state, indent=2) + "\n", mode=0o644)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def verify_files(version: str, folder: Path, files: dict[str, str]) -> None:
    """Every file of an adapter present with its recorded sha256; raises AdapterCorrupted naming
    the first that is not. The registry checks on load, the backends again before every (re)load."""
    for name, expected in files.items():
        try:
            actual = sha256_file(folder / name)
        except OSError:
            raise AdapterCorrupted(f"adapter {version}: {name} is missing or cannot be read; retrain or restore it") from None
        if actual != expected:
            raise AdapterCorrupted(
                f"adapter {version}: {name} does not match its recorded hash (sha256; corrupted or edited since it "
                "was registered); retrain or restore it, or roll back"
            )


def _with_event(state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """State and its event log change in one write."""
    state["events"].append({"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **event})
    return state
