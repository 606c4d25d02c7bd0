"""The running answer service's state: the pipeline, authentication, metrics, conversations and
the answer slots (back-pressure). Routes reach it through answer/deps.py.

    service = build_service(get_settings())      # answer/app.py: opens the store, starts or connects to vLLM
    app = create_app(service)                    # uvicorn.run(app) — `policyrag serve` does both
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from answer.auth import Authenticator
from answer.backends import Backend
from answer.errors import (
    ConversationNotFound,
    InvalidRequest,
    Overloaded,
    QuestionTooLong,
)
from answer.metrics import Metrics
from answer.pipeline import AnswerPipeline, AnswerResult
from core.errors import PolicyRagError
from core.settings import Settings
from retrieval.acl import Principal

if TYPE_CHECKING:
    from answer.vllm_server import VllmServer

logger = logging.getLogger(__name__)


def check_unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer, log or response can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"the text is not valid Unicode (an unpaired surrogate at character {exc.start}); send UTF-8 text"
        ) from None
    return text


@dataclass
class BackgroundWork:
    """Work the service runs beside answering (`policyrag up`: train, evaluate and promote an
    adapter while the best model available now serves). Operators see it in `/v1/ops/ready`, users in
    the chat page's banner; it never makes the service unready."""

    title: str
    stage: str = "starting"
    progress: float | None = None  # 0..1 of the current stage, when known
    eta_s: float | None = None  # of the whole work, when known
    state: Literal["running", "done", "failed"] = "running"
    outcome: str = ""
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, stage: str, *, progress: float | None = None, eta_s: float | None = None) -> None:
        with self._lock:
            self.stage, self.progress, self.eta_s = stage, progress, eta_s

    def finish(self, state: Literal["done", "failed"], outcome: str) -> None:
        with self._lock:
            self.state, self.outcome, self.progress, self.eta_s = state, outcome, None, None

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"title": self.title, "state": self.state, "stage": self.stage, "outcome": self.outcome,
                    "progress": None if self.progress is None else round(self.progress, 3),
                    "eta_s": None if self.eta_s is None else round(self.eta_s),
                    "elapsed_s": round(time.time() - self.started)}


@dataclass
class Service:
    settings: Settings
    pipeline: AnswerPipeline
    auth: Authenticator
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: VllmServer | None = None  # when the service started vLLM itself
    background: BackgroundWork | None = None  # e.g. an adapter being trained while the service answers
    conversations: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _per_user: dict[str, int] = field(default_factory=dict)  # answers in flight per user: the slots
    _ready: tuple[float, dict] | None = None  # (when, report): the last readiness checks
    _ready_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.metrics.watch_audit(self.pipeline.audit.size_bytes)

    @property
    def backend(self) -> Backend:
        return self.pipeline.backend

    def readiness(self, *, fresh: bool = False) -> dict[str, Any]:
        """The readiness checks, run at most once per `readiness_cache_s` unless `fresh`; callers
        arriving meanwhile wait for the one run and share it (no stampede on the store or vLLM)."""
        with self._ready_lock:
            now = time.monotonic()
            if fresh or self._ready is None or now - self._ready[0] >= self.settings.readiness_cache_s:
                self._ready = (now, readiness_report(self))
            return self._ready[1]

    @contextlib.contextmanager
    def answer_slot(self, principal: Principal) -> Iterator[None]:
        """One answer in flight for this user (see `take_slot`), released on leaving the block.
        Held only around the answer itself, never across a `yield` to a client, so a client that
        drops its stream cannot keep a slot."""
        release = self.take_slot(principal)
        try:
            yield
        finally:
            release()

    def take_slot(self, principal: Principal):
        """Take a slot or raise Overloaded (429: past the service's slots or the user's own
        share); returns the function that gives it back (idempotent)."""
        user = principal.user_id
        with self._lock:
            self._check_capacity(user)  # the service's slots and the user's share, one lock
            self._per_user[user] = self._per_user.get(user, 0) + 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._per_user[user] -= 1
                if not self._per_user[user]:
                    del self._per_user[user]

        return release

    def check_capacity(self, principal: Principal) -> None:
        """429 now if no slot is free for this user (a stream checks before it starts; the slot is
        taken when the answer is made)."""
        with self._lock:
            self._check_capacity(principal.user_id)

    def _check_capacity(self, user: str) -> None:
        if self._per_user.get(user, 0) >= self.settings.max_answers_per_user:
            raise Overloaded(f"you already have {self.settings.max_answers_per_user} answers in progress "
                             "(POLICYRAG_MAX_ANSWERS_PER_USER); wait for them")
        if sum(self._per_user.values()) >= self.settings.max_concurrent_answers:
            raise Overloaded(f"{self.settings.max_concurrent_answers} answers are already in progress; "
                             "retry in a few seconds")

    def slots_in_use(self) -> int:
        with self._lock:
            return sum(self._per_user.values())

    # conversations: id -> (owner, the last 10 raw questions); bounded per user and in all,
    # least recently used out: a user who opens many conversations only drops their own
    def history(self, principal: Principal, conversation_id: str | None) -> tuple[str, list[str]]:
        with self._lock:
            if conversation_id is None:
                mine = [cid for cid, (owner, _) in self.conversations.items() if owner == principal.user_id]
                for cid in mine[: max(0, len(mine) - self.settings.max_conversations_per_user + 1)]:
                    del self.conversations[cid]
                conversation_id = uuid.uuid4().hex
                self.conversations[conversation_id] = (principal.user_id, [])
            entry = self.conversations.get(conversation_id)
            if entry is None or entry[0] != principal.user_id:
                # another user's conversation looks exactly like a missing one
                raise ConversationNotFound(
                    f"conversation {conversation_id!r} not found (expired or never started); omit conversation_id to start one"
                )
            self.conversations.move_to_end(conversation_id)
            while len(self.conversations) > 10_000:
                self.conversations.popitem(last=False)
            return conversation_id, list(entry[1])

    def remember(self, principal: Principal, conversation_id: str, query: str) -> None:
        with self._lock:
            entry = self.conversations.get(conversation_id)
            if entry is not None and entry[0] == principal.user_id:
                entry[1].append(query)
                del entry[1][:-10]

    def answer(self, principal: Principal, question: str, *, history=(), conversation_id=None,
               endpoint: str, on_event=None, request_id: str | None = None) -> AnswerResult:
        result = self.pipeline.answer(principal, question, history=history, conversation_id=conversation_id,
                                      endpoint=endpoint, on_event=on_event, request_id=request_id)
        self.metrics.record(result)
        if conversation_id is not None:
            self.remember(principal, conversation_id, result.question)  # raw: rewrites never nest
        return result

    def checked_question(self, text: str) -> str:
        """The question, stripped; empty, too long or not valid Unicode is a clear 422."""
        text = check_unicode(text).strip()
        if not text:
            raise InvalidRequest("the question is empty; send a question")
        if len(text) > self.settings.max_question_chars:
            raise QuestionTooLong(
                f"the question is {len(text)} characters; the limit is {self.settings.max_question_chars} "
                "(POLICYRAG_MAX_QUESTION_CHARS): shorten it"
            )
        return text

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        self.backend.close()
        try:
            self.pipeline.retriever.store.close()
        except Exception:  # closing is best effort at shutdown
            logger.exception("closing the store failed")


def readiness_report(service: Service) -> dict[str, Any]:
    """The checks behind /readyz and /v1/ops/ready (answer/routes_ops.py)."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        count = service.pipeline.store_count()
        checks["store"] = {"ok": count > 0, "detail": f"{count} passages indexed" if count else "the index is empty; run policyrag ingest"}
    except Exception as exc:  # any store failure means not ready
        checks["store"] = {"ok": False, "detail": f"store unreachable: {exc}"}
    ok, detail = service.backend.health()
    checks["model_backend"] = {"ok": ok, "detail": detail}
    try:
        adapter = service.pipeline.current_adapter()
        if adapter is None:
            checks["adapter"] = {"ok": True, "detail": "no adapter promoted: answering with the base model"}
        else:
            if ok and hasattr(service.backend, "ensure_adapter"):
                service.backend.ensure_adapter(adapter)
            checks["adapter"] = {"ok": True, "detail": f"promoted adapter {adapter.version}"}
    except PolicyRagError as exc:
        checks["adapter"] = {"ok": False, "detail": str(exc)}
    ready = all(c["ok"] for c in checks.values())
    if service.background is not None:  # informational: answering goes on meanwhile
        work = service.background.as_dict()
        checks["background"] = {"ok": work["state"] != "failed", "detail": describe_work(work), **work}
    return {"ready": ready, "checks": checks}


def describe_work(work: dict[str, Any]) -> str:
    if work["state"] != "running":
        return f"{work['title']}: {work['outcome']}"
    eta = f", about {work['eta_s'] // 60 + 1} min left" if work["eta_s"] is not None else ""
    return f"{work['title']}: {work['stage']}{eta}"
