"""Run the document loaders in a separate process under a memory and a time limit.

Small files can make a loader spin or balloon inside every size cap: a 382 KB DOCX (27 MB of XML,
71x its size) took 5.9 s and a 580 MB peak to read, 600 KB of YAML front matter 3 s. So each file
is read in a worker process whose address space is capped (RLIMIT_AS) and whose answer is awaited
for a limited time; a file over either limit is rejected as `too_costly`, the worker is killed
and replaced, and the ingest goes on with the next file. The worker is started once and reused for
every file (starting one per file would cost more than reading a policy), with "spawn": the
parent holds model threads that fork does not copy safely, and a forked child would count the
parent's gigabytes of models against its own limit. Like every spawned process, the worker
imports the parent's main script first: a script that ingests needs `if __name__ == "__main__":`.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import ConfigError, DocumentRejected

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from core.settings import Settings

T = TypeVar("T")
REASON = "too_costly"
# what the loaders import lazily: imported before the limits apply, so neither the first PDF's
# time nor its memory pays for loading libraries
_WARM_UP = ("ingest.loaders", "bs4", "pypdf", "llama_index.readers.file")
_START_TIMEOUT_S = 300.0


class LoaderSandbox:
    """Usage: `LoaderSandbox(memory_mb=1024, timeout_s=30).run(rel, load_document, path, root,
    max_bytes=...)`, then `close()`. Calls from several threads take turns on the one worker.

    `memory_mb` is what reading one file may add to the worker's own address space (its libraries,
    ~0.5 GB mapped and mostly untouched); 0 = no memory limit, `timeout_s` 0 = no time limit."""

    def __init__(self, memory_mb: int, timeout_s: float) -> None:
        self.memory_mb, self.timeout_s = memory_mb, timeout_s
        self.workers_started = 0
        self._lock = threading.Lock()
        self._worker: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False

    def run(self, rel: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the worker; `fn` and its arguments must pickle (a module-level
        function). Its DocumentRejected and other exceptions are raised here; a call past a limit
        raises DocumentRejected(rel, "too_costly", ...) and the next call gets a fresh worker."""
        with self._lock:
            conn = self._connect()
            try:
                conn.send((fn, args, kwargs))
                if not conn.poll(self.timeout_s or None):
                    self._replace()
                    raise DocumentRejected(
                        rel, REASON,
                        f"reading it took longer than {self.timeout_s:g} s, the loader's time limit "
                        "(POLICYRAG_LOADER_TIMEOUT_S), and was stopped; a file this slow is damaged or "
                        "built to stall the ingest: re-export or split it, or raise the limit if it is genuine")
                kind, value = conn.recv()
            except (EOFError, OSError):  # the worker died: a crash in native code, memory, a kill
                code = self._replace()
                limit = f" under the {self.memory_mb} MB limit (POLICYRAG_LOADER_MEMORY_MB)" if self.memory_mb else ""
                raise DocumentRejected(
                    rel, REASON,
                    f"the loader process died reading it ({_exit_status(code)}), most likely out of memory "
                    f"in a native library{limit}; re-export or split the file, or raise the limit if it is "
                    "genuine") from None
            if kind == "memory":
                self._replace()
                limit = f"more than {self.memory_mb} MB, the loader's memory limit" if self.memory_mb else "more memory than there is"
                raise DocumentRejected(
                    rel, REASON,
                    f"reading it needed {limit} (POLICYRAG_LOADER_MEMORY_MB); a small file that expands "
                    "this far is damaged or a decompression bomb: re-export or split it, or raise the limit "
                    "if it is genuine")
        if kind == "rejected":
            path, reason, message, access = value
            raise DocumentRejected(path, reason, message, access=access)
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> LoaderSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> Connection:
        """The worker's pipe, once it has warmed up; a worker that died while idle is replaced."""
        if self._worker is None or not self._worker.is_alive():
            self._stop()
            self._start()
        assert self._conn is not None and self._worker is not None
        if not self._ready:
            try:
                ready = self._conn.poll(_START_TIMEOUT_S) and self._conn.recv() == "ready"
            except (EOFError, OSError):
                ready = False
            if not ready:
                code = self._worker.exitcode
                self._stop()
                raise ConfigError(
                    f"the document loader process did not start ({_exit_status(code)}); its error is printed "
                    "above. Set POLICYRAG_LOADER_MEMORY_MB=0 and POLICYRAG_LOADER_TIMEOUT_S=0 to load "
                    "documents in-process and see it there")
            self._ready = True
        return self._conn

    def _start(self) -> None:
        """Start a worker without waiting for it: it warms up while the caller goes on."""
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        worker = ctx.Process(target=_serve, args=(theirs, self.memory_mb), name="policyrag-loader", daemon=True)
        worker.start()
        theirs.close()
        self._worker, self._conn, self._ready = worker, ours, False
        self.workers_started += 1

    def _replace(self) -> int | None:
        """Kill the worker (stuck, or its heap spent) and start the next one now; its exit code."""
        assert self._worker is not None
        self._worker.kill()
        self._worker.join()
        code = self._worker.exitcode
        self._stop()
        self._start()
        return code

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # an idle worker reads end-of-file and exits
        if self._worker is not None:
            self._worker.join(timeout=1)
            if self._worker.is_alive():
                self._worker.kill()
                self._worker.join()
        self._worker, self._conn, self._ready = None, None, False


def run_limited(settings: Settings, rel: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` under the settings' loader limits, in one worker shared by the whole
    process (watch mode and repeated runs pay its start once); both limits 0: in-process."""
    global _shared
    limits = (settings.loader_memory_mb, settings.loader_timeout_s)
    if not any(limits):
        return fn(*args, **kwargs)
    with _shared_lock:
        if _shared is not None and (_shared.memory_mb, _shared.timeout_s) != limits:
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = LoaderSandbox(*limits)
        sandbox = _shared
    return sandbox.run(rel, fn, *args, **kwargs)


_shared: LoaderSandbox | None = None
_shared_lock = threading.Lock()


@atexit.register
def _close_shared() -> None:
    if _shared is not None:
        _shared.close()


def _serve(conn: Connection, memory_mb: int) -> None:
    """The worker: warm up, cap the address space, then run calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the run
    parent = multiprocessing.parent_process()
    assert parent is not None
    # a parent killed mid-file must not leave a worker spinning on a hostile file forever
    threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    for module in _WARM_UP:
        importlib.import_module(module)
    if memory_mb:
        with open("/proc/self/statm") as statm:  # pages of address space mapped now
            limit = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send("ready")
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the parent closed its end (unread data there makes it a reset)
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except DocumentRejected as exc:  # does not unpickle (its __init__ wants three arguments)
            reply = ("rejected", (exc.path, exc.reason, exc.message, exc.access))
        except MemoryError:
            reply = ("memory", None)
        except Exception as exc:
            reply = ("error", _portable(exc))
        try:
            conn.send(reply)
        except MemoryError:  # the answer itself did not fit
            reply = ("memory", None)
            conn.send(reply)
        if reply[0] == "memory":
            return  # the parent starts a worker with a clean heap


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _portable(exc: Exception) -> Exception:
    """`exc` with the worker's traceback as a note, or a RuntimeError saying it when `exc` does not
    survive pickling."""
    where = "in the loader process:\n" + "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.add_note(where)
    return exc


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
