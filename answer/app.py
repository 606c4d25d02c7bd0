"""The answer service's FastAPI app: the routers, the middleware and the error handlers, and
how a `Service` is built from settings.

    service = build_service(get_settings())      # opens the store, starts or connects to vLLM
    app = create_app(service)                    # uvicorn.run(app) — `policyrag serve` does both

Every error is JSON `{"error": {"code", "message", "type"}}` (the OpenAI SDK's shape), with a
stable `code` and the HTTP status its class carries.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from answer import routes_answers, routes_ops
from answer.auth import Authenticator, check_bind, check_production_secrets
from answer.backends import Backend
from answer.errors import error_response, policyrag_error_response
from answer.pipeline import AnswerPipeline
from answer.request_log import RequestLog, log_json_to_stderr
from answer.service import Service
from core.errors import PolicyRagError
from core.settings import Settings

logger = logging.getLogger(__name__)


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
            response = error_response("request_too_large",
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
                response = error_response("request_too_large", f"the request body is over the limit of {self.max_bytes} bytes", 413)
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
    app = FastAPI(
        title="policyrag answer service",
        version="0.1.0",
        description="Cited, access-controlled answers about company policy in the house format.",
    )
    app.state.service = service
    app.include_router(routes_answers.router)
    app.include_router(routes_ops.router)
    app.add_middleware(_BodyLimit, max_bytes=service.settings.max_request_bytes)
    app.add_middleware(RequestLog, metrics=service.metrics)  # added last: outermost, so it sees the 413s too

    @app.exception_handler(PolicyRagError)
    async def policyrag_error(request: Request, exc: PolicyRagError):
        if exc.http_status >= 500:
            logger.warning("%s %s: %s", request.url.path, exc.code, exc)
        return policyrag_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        return error_response("invalid_request", f"the request is invalid: {problems}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (not UTF-8, nested past the JSON parser's depth):
            # a malformed request like any other, so the documented 422 invalid_request
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
            return error_response("invalid_request", f"the request body cannot be parsed{cause}; send a UTF-8 JSON object", 422)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(codes.get(exc.status_code, "http_error"), str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        logger.exception("unhandled error %s on %s", incident, request.url.path)
        return error_response("internal_error", f"internal error (incident {incident}); it has been logged", 500)

    return app


def run_service(service: Service, host: str, port: int) -> None:
    """Serve the app with uvicorn until Ctrl-C/SIGTERM (`policyrag serve` and `policyrag up`):
    past 4x the answer slots uvicorn itself answers 503, so the queue stays bounded."""
    import uvicorn

    check_bind(service.settings, host)
    log_json_to_stderr()
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning",
                limit_concurrency=service.settings.max_concurrent_answers * 4, timeout_graceful_shutdown=10)


def build_service(settings: Settings, *, backend: Backend | None = None, embedder=None,
                  on_stage=lambda stage: None) -> Service:
    """Open the store, load the embedder, and start or connect to the model backend."""
    from core.provision import base_model_identity
    from retrieval.retriever import Retriever

    check_production_secrets(settings)
    if settings.answer_backend == "vllm" and backend is None and settings.service_torch_threads:
        import torch

        torch.set_num_threads(settings.service_torch_threads)  # see the setting: vLLM spins after a request
    on_stage("opening the index")
    retriever = Retriever.from_settings(settings, embedder=embedder)
    model_dir, identity = base_model_identity(settings)
    supervisor = None
    router = None  # the promoted adapter served merged (answer/merged.py)
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
                supervisor.spawn()  # waited for below, once the merged server has been started beside it
                url = supervisor.url
            if supervisor is not None:
                key = supervisor.api_key
            else:
                key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
            backend = VllmBackend(url, api_key=key, timeout_s=settings.generation_timeout_s)
            if supervisor is not None:
                supervisor.on_restart = backend.forget_adapters
                if settings.serve_merged:  # the promoted adapter at base-model speed
                    from answer.merged import MergedRouter

                    backend = router = MergedRouter(backend, settings)
    pipeline = AnswerPipeline(settings, retriever, backend, base_model=identity)
    if router is not None:
        router.promoted = pipeline.current_adapter
        # the promoted adapter's merged server starts now, beside the run-time LoRA one, rather
        # than after it: the two start-ups overlap (README, Answer speed: session 14)
        router.start()
    auth = Authenticator(settings, lambda: retriever.directory)  # follows edits of the directory file
    service = Service(settings=settings, pipeline=pipeline, auth=auth, supervisor=supervisor)
    if supervisor is not None:
        try:
            supervisor.await_ready()
        except BaseException:
            # both servers (the merged router is the backend) and the index's lock: a retry in
            # this process can open it
            service.close()
            raise
    return service
