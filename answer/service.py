"""The answer service (FastAPI): the HR endpoint, the compliance chat, an OpenAI-compatible
endpoint, health, readiness, Prometheus metrics and the chat page.

    service = build_service(get_settings())      # opens the store, starts or connects to vLLM
    app = create_app(service)                    # uvicorn.run(app) — `policyrag serve` does both

Every error is JSON `{"error": {"code", "message", "type"}}` (the OpenAI SDK's shape), with a
stable `code`. Handlers are plain `def`s: FastAPI runs them in its thread pool, and the answer
pipeline is synchronous (retrieval is a few ms; generation waits on the model server).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from answer.auth import Authenticator
from answer.backends import Backend
from answer.pipeline import AnswerPipeline, AnswerResult, rewrite_turns
from ingest.errors import ConfigError, PolicyRagError, StoreError
from ingest.settings import Settings
from retrieval.acl import Principal

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
HARD_MAX_QUESTION = 32_000  # schema bound; the configured limit (max_question_chars) is checked too

STATUS_BY_CODE = {
    "unauthenticated": 401,
    "unknown_user": 403,
    "no_groups": 403,
    "access_denied": 403,
    "conversation_not_found": 404,
    "request_too_large": 413,
    "invalid_request": 422,
    "question_too_long": 422,
    "config_error": 422,  # e.g. an empty question reaching the retriever
    "overloaded": 429,
    "backend_unavailable": 503,
    "adapter_unavailable": 503,
    "store_error": 503,
}


class Overloaded(PolicyRagError):
    code = "overloaded"


class ConversationNotFound(PolicyRagError):
    code = "conversation_not_found"


class InvalidRequest(PolicyRagError):
    code = "invalid_request"


# -- request and response models (they make the OpenAPI docs at /docs) --------------------------


class HrAnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=HARD_MAX_QUESTION, examples=["How many days of annual leave can I carry over?"])
    conversation_id: str | None = Field(None, max_length=64, description="continue a conversation (follow-ups)")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=HARD_MAX_QUESTION)
    conversation_id: str | None = Field(None, max_length=64, description="omit to start a conversation")


class CitationOut(BaseModel):
    id: str
    quote: str
    doc_id: str
    title: str
    version: str
    section: list[str]
    label: str
    link: str
    passage: str


class AnswerOut(BaseModel):
    request_id: str
    conversation_id: str | None
    status: Literal["answered", "refused", "escalate"]
    answer: str | None
    reason: str | None
    citations: list[CitationOut]
    query: str = Field(description="the stand-alone query used for retrieval")
    versions: dict[str, Any]
    latency_ms: dict[str, float]
    usage: dict[str, int]
    repaired: bool = Field(description="the model's citations needed repair before being shown")


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            texts = [part.get("text") or "" for part in self.content if part.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise InvalidRequest("a message content part of type 'text' needs a string 'text'")
            return " ".join(texts)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send many optional fields
    model: str | None = "policyrag"
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


# -- metrics ------------------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("policyrag_requests_total", "HTTP requests", ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram(
            "policyrag_request_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120),
        )
        self.answers = Counter("policyrag_answers_total", "answers by status and reason", ["status", "reason"], registry=self.registry)
        self.refusals = Counter("policyrag_refusals_total", "refused answers by reason", ["reason"], registry=self.registry)
        self.tokens = Counter("policyrag_tokens_total", "model tokens", ["kind"], registry=self.registry)
        self.repairs = Counter("policyrag_citation_repairs_total", "answers whose citations failed verification", registry=self.registry)
        self.first_token = Histogram(
            "policyrag_time_to_first_token_seconds", "streamed chat: request to first model token",
            registry=self.registry, buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20),
        )

    def record(self, result: AnswerResult) -> None:
        self.answers.labels(result.status, result.answer.reason or "").inc()
        if result.status == "refused":
            self.refusals.labels(result.answer.reason).inc()
        self.tokens.labels("prompt").inc(result.usage["prompt_tokens"])
        self.tokens.labels("completion").inc(result.usage["completion_tokens"])
        if result.repairs:
            self.repairs.inc()
        if "first_token" in result.latency_ms:
            self.first_token.observe(result.latency_ms["first_token"] / 1000)


# -- the service ----------------------------------------------------------------------------------


@dataclass
class Service:
    settings: Settings
    pipeline: AnswerPipeline
    auth: Authenticator
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: Any = None  # answer.vllm_server.VllmServer when the service started vLLM itself
    conversations: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: threading.BoundedSemaphore | None = None

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.settings.max_concurrent_answers)

    @property
    def backend(self) -> Backend:
        return self.pipeline.backend

    def slot(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(
                f"{self.settings.max_concurrent_answers} answers are already in progress; retry in a few seconds"
            )

    def release(self) -> None:
        self._slots.release()

    # conversations: id -> (owner, stand-alone queries so far); bounded, least recently used out
    def history(self, principal: Principal, conversation_id: str | None) -> tuple[str, list[str]]:
        with self._lock:
            if conversation_id is None:
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
               endpoint: str, on_event=None) -> AnswerResult:
        result = self.pipeline.answer(principal, question, history=history, conversation_id=conversation_id,
                                      endpoint=endpoint, on_event=on_event)
        self.metrics.record(result)
        if conversation_id is not None:
            self.remember(principal, conversation_id, result.query)
        return result

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        self.backend.close()
        try:
            self.pipeline.retriever.store.close()
        except Exception:  # closing is best effort at shutdown
            logger.exception("closing the store failed")


class QuestionTooLong(PolicyRagError):
    code = "question_too_long"


def _check_unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer, log or response can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"the text is not valid Unicode (an unpaired surrogate at character {exc.start}); send UTF-8 text"
        ) from None
    return text


def _check_question(service: Service, text: str) -> str:
    text = _check_unicode(text).strip()
    if not text:
        raise InvalidRequest("the question is empty; send a question")
    if len(text) > service.settings.max_question_chars:
        raise QuestionTooLong(
            f"the question is {len(text)} characters; the limit is {service.settings.max_question_chars} "
            "(POLICYRAG_MAX_QUESTION_CHARS): shorten it"
        )
    return text


def _error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"code": code, "message": message, "type": kind}}, status_code=status, headers=headers)


class _BodyLimit:
    """Pure ASGI middleware: 413 for a body over the limit, declared or streamed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = _error("request_too_large",
                              f"the request body is {int(declared)} bytes; the limit is {self.max_bytes}", 413)
            return await response(scope, receive, send)
        if declared is not None:
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): buffer up to the limit, then replay the body to the app
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnected: let the app see it
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.max_bytes:
                response = _error("request_too_large", f"the request body is over the limit of {self.max_bytes} bytes", 413)
                return await response(scope, receive, send)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(service: Service) -> FastAPI:
    settings = service.settings
    app = FastAPI(
        title="policyrag answer service",
        version="0.1.0",
        description="Cited, access-controlled answers about company policy in the house format.",
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, max_bytes=settings.max_request_bytes)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(PolicyRagError)
    async def policyrag_error(request: Request, exc: PolicyRagError):
        status = STATUS_BY_CODE.get(exc.code, 500)
        headers = {"Retry-After": "2"} if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        if status >= 500:
            logger.warning("%s %s: %s", request.url.path, exc.code, exc)
        return _error(exc.code, str(exc), status, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        return _error("invalid_request", f"the request is invalid: {problems}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (not UTF-8, nested past the JSON parser's depth):
            # a malformed request like any other, so the documented 422 invalid_request
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
            return _error("invalid_request", f"the request body cannot be parsed{cause}; send a UTF-8 JSON object", 422)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(codes.get(exc.status_code, "http_error"), str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        logger.exception("unhandled error %s on %s", incident, request.url.path)
        return _error("internal_error", f"internal error (incident {incident}); it has been logged", 500)

    def principal(authorization: str | None, x_api_key: str | None) -> Principal:
        return service.auth.principal_for(authorization, x_api_key)

    # -- endpoints --------------------------------------------------------------------------

    @app.post("/v1/hr/answer", response_model=AnswerOut, tags=["answers"],
              summary="One question → one cited house-format answer (the HR assistant endpoint)")
    def hr_answer(body: HrAnswerRequest, authorization: str | None = Header(None),
                  x_api_key: str | None = Header(None)) -> dict:
        who = principal(authorization, x_api_key)
        question = _check_question(service, body.question)
        history: list[str] = []
        conversation_id = body.conversation_id
        if conversation_id is not None:
            conversation_id, history = service.history(who, conversation_id)
        service.slot()
        try:
            result = service.answer(who, question, history=history, conversation_id=conversation_id,
                                    endpoint="/v1/hr/answer")
        finally:
            service.release()
        return result.to_json()

    @app.post("/v1/chat", tags=["answers"], summary="Compliance chat: multi-turn, streamed as server-sent events",
              response_description="text/event-stream: `meta`, `token` (draft model output, not for display), "
                                   "`answer` (the verified answer: render this), `error`, `done`")
    def chat(body: ChatRequest, authorization: str | None = Header(None),
             x_api_key: str | None = Header(None)) -> StreamingResponse:
        who = principal(authorization, x_api_key)
        question = _check_question(service, body.message)
        conversation_id, history = service.history(who, body.conversation_id)
        service.slot()
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                result = service.answer(who, question, history=history, conversation_id=conversation_id,
                                        endpoint="/v1/chat", on_event=lambda kind, data: events.put((kind, data)))
                events.put(("answer", result.to_json()))
            except PolicyRagError as exc:
                events.put(("error", {"code": exc.code, "message": str(exc)}))
            except Exception as exc:  # the stream has started: report, do not hang
                logger.exception("chat answer failed")
                events.put(("error", {"code": "internal_error", "message": f"internal error ({type(exc).__name__})"}))
            finally:
                service.release()
                events.put(("done", {}))

        threading.Thread(target=work, name="chat-answer", daemon=True).start()

        def stream() -> Iterator[str]:
            while True:
                kind, data = events.get()
                payload = data if kind != "token" else {"text": data}
                yield f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
                if kind == "done":
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", tags=["openai"],
              summary="OpenAI-compatible chat completions (streaming and not); citations in the text and in `policyrag`")
    def chat_completions(body: ChatCompletionRequest, authorization: str | None = Header(None),
                         x_api_key: str | None = Header(None)):
        who = principal(authorization, x_api_key)
        users = [m.text() for m in body.messages if m.role == "user"]
        if not users or body.messages[-1].role != "user":
            raise InvalidRequest("the last message must be a user message with the question")
        question = _check_question(service, users[-1])
        # earlier user turns are the conversation; rewrite them the same way the chat does
        history = rewrite_turns([_check_unicode(turn) for turn in users[:-1]])
        service.slot()
        created = int(time.time())
        if not body.stream:
            try:
                result = service.answer(who, question, history=history, endpoint="/v1/chat/completions")
            finally:
                service.release()
            return _completion(result, created)

        def stream() -> Iterator[str]:
            chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
            try:
                yield _sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": "policyrag",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
                try:
                    result = service.answer(who, question, history=history, endpoint="/v1/chat/completions")
                except PolicyRagError as exc:
                    yield _sse({"error": {"code": exc.code, "message": str(exc), "type": "server_error"}})
                    yield "data: [DONE]\n\n"
                    return
            finally:
                service.release()
            text = message_text(result)
            # only verified text is streamed: the answer is checked before its first word is sent
            for piece in _pieces(text):
                yield _sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                            "model": _model_name(result),
                            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            final = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": _model_name(result),
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "policyrag": result.to_json()}
            yield _sse(final)
            if (body.stream_options or {}).get("include_usage"):
                yield _sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                            "model": _model_name(result), "choices": [], "usage": _usage(result)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models", tags=["openai"], summary="OpenAI-compatible model list")
    def models(authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> dict:
        principal(authorization, x_api_key)
        return {"object": "list", "data": [{"id": "policyrag", "object": "model", "created": 0, "owned_by": "policyrag"}]}

    @app.get("/v1/me", tags=["answers"], summary="Who the credential belongs to (user, groups, region)")
    def me(authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> dict:
        who = principal(authorization, x_api_key)
        return {"user": who.user_id, "groups": list(who.groups), "region": who.region}

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Store, model backend and promoted adapter reachable")
    def readyz():
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
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "5"})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def chat_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))

    return app


REFUSAL_TEXT = {
    "no_authorized_source": "I can't answer that: none of the policies you have access to covers it.",
    "not_in_policy": "The policies you have access to cover this subject but do not state this point.",
    "out_of_scope": "That isn't a question about company policy, so I can't answer it here.",
}


def message_text(result: AnswerResult) -> str:
    """The answer as a chat message: the text, then numbered sources (for plain chat clients)."""
    answer = result.answer
    if answer.status == "refused":
        text = REFUSAL_TEXT.get(answer.reason, "I can't answer that.")
    elif answer.status == "escalate":
        text = f"{answer.answer}\n\nThis needs a person: please contact the team named above."
    else:
        text = answer.answer or ""
    if result.citations:
        lines = [f"[{n}] {c.label} ({c.id}): \"{c.quote}\"" for n, c in enumerate(result.citations, 1)]
        text += "\n\nSources:\n" + "\n".join(lines)
    return text


def _model_name(result: AnswerResult) -> str:
    return f"policyrag/{result.versions.get('adapter') or 'base'}"


def _usage(result: AnswerResult) -> dict[str, int]:
    p, c = result.usage["prompt_tokens"], result.usage["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _completion(result: AnswerResult, created: int) -> dict[str, Any]:
    extra = result.to_json()
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": _model_name(result),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": message_text(result), "policyrag": extra}}],
        "usage": _usage(result),
        "policyrag": extra,
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _pieces(text: str, size: int = 24) -> Iterator[str]:
    words = text.split(" ")
    for start in range(0, len(words), size):
        piece = " ".join(words[start:start + size])
        yield piece if start == 0 else " " + piece


# -- building a service from settings -------------------------------------------------------------


class _StoreBoundary:
    """The retriever's store, with its failures translated at the boundary: the Qdrant Edge
    binding and qdrant-client raise their own exceptions (a closed shard, a refused connection),
    which would otherwise reach callers as 500 `internal_error`; they become `StoreError`
    (503 `store_error` with Retry-After). Only the calls a request makes are wrapped."""

    def __init__(self, store) -> None:
        self._store = store

    def _call(self, name: str, *args, **kwargs):
        try:
            return getattr(self._store, name)(*args, **kwargs)
        except PolicyRagError:
            raise
        except Exception as exc:
            raise StoreError(
                f"the vector store failed ({type(exc).__name__}: {exc}); check that the index is reachable "
                "(POLICYRAG_STORE_URL, or the index under POLICYRAG_DATA_DIR) and retry"
            ) from exc

    def query(self, request):
        return self._call("query", request)

    def count(self) -> int:
        return self._call("count")

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def run_service(service: Service, host: str, port: int) -> None:
    """Serve the app with uvicorn until Ctrl-C/SIGTERM (`policyrag serve` and `policyrag up`):
    past 4x the answer slots uvicorn itself answers 503, so the queue stays bounded."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level="warning",
                limit_concurrency=service.settings.max_concurrent_answers * 4, timeout_graceful_shutdown=10)


def build_service(settings: Settings, *, backend: Backend | None = None, embedder=None,
                  on_stage=lambda stage: None) -> Service:
    """Open the store, load the embedder, and start or connect to the model backend."""
    from answer.pipeline import serving_base_model
    from retrieval.retriever import Retriever

    check_production_secrets(settings)
    on_stage("opening the index")
    retriever = Retriever.from_settings(settings, embedder=embedder)
    retriever.store = _StoreBoundary(retriever.store)
    model_dir, identity = serving_base_model(settings)
    supervisor = None
    if backend is None:
        if settings.answer_backend == "local":
            from answer.backends import LocalBackend

            on_stage(f"loading {model_dir.name} in process (local backend)")
            backend = LocalBackend(model_dir)
        else:
            from answer.backends import VllmBackend

            url = settings.vllm_url
            if url is None:
                from answer.vllm_server import VllmServer

                supervisor = VllmServer(model_dir, settings)
                on_stage(f"starting the vLLM server on port {supervisor.port} (about a minute; log: {supervisor.log_path})")
                supervisor.start()
                url = supervisor.url
            key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
            backend = VllmBackend(url, api_key=key, timeout_s=settings.generation_timeout_s)
            if supervisor is not None:
                supervisor.on_restart = backend.forget_adapters
    pipeline = AnswerPipeline(settings, retriever, backend, base_model=identity)
    auth = Authenticator(settings, retriever.directory)
    return Service(settings=settings, pipeline=pipeline, auth=auth, supervisor=supervisor)


# secrets anyone can read: placeholders, and the example/test values published in this repository
KNOWN_EXAMPLE_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "secret", "your-256-bit-secret",
    "test-secret-of-at-least-32-bytes-length!", "another-secret-of-at-least-32-bytes!!",
})
MIN_JWT_SECRET_BYTES = 32  # HS256 signs with SHA-256: a shorter key is weaker than the hash (RFC 7518 §3.2)


def check_production_secrets(settings: Settings) -> None:
    """Outside `local`, refuse demo API keys in the directory and a weak or known JWT secret."""
    if settings.environment == "local":
        return
    from retrieval.directory import load_directory

    problems = []
    demo = [uid for uid, user in load_directory(settings.directory_file).users.items() if user.api_key]
    if demo:
        problems.append(
            f"the directory {settings.directory_file} holds demo API keys "
            f"(users: {', '.join(demo)}); remove them and issue keys with `policyrag keys create`"
        )
    if settings.jwt_hs256_secret is not None:
        secret = settings.jwt_hs256_secret.get_secret_value()
        size = len(secret.encode("utf-8"))
        known = secret.strip().lower() in KNOWN_EXAMPLE_SECRETS
        if known or size < MIN_JWT_SECRET_BYTES:
            why = "is a published example value" if known else f"is only {size} bytes"
            problems.append(
                f"POLICYRAG_JWT_HS256_SECRET (jwt_hs256_secret) {why}; set it to a random secret of at least "
                f"{MIN_JWT_SECRET_BYTES} bytes, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`, "
                "or unset it to accept only API keys and RS256 tokens"
            )
    if problems:
        raise ConfigError(f"environment is {settings.environment!r}; refusing to start: " + "; ".join(problems))
