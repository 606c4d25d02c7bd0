"""Operations endpoints: liveness, readiness, Prometheus metrics, and the chat page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from answer.deps import MetricsAccessDep, OperatorDep, PrincipalDep, ServiceDep
from answer.service import describe_work
from core.errors import PolicyRagError

STATIC = Path(__file__).parent / "static"

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to answer: 200 or 503, nothing more")
def readyz(service: ServiceDep):
    """Readiness for load balancers and orchestrators. Public, so it names nothing (no index
    size, model, adapter or address: operators read those at /v1/ops/ready); the checks run at
    most once per POLICYRAG_READINESS_CACHE_S however often it is called."""
    ready = service.readiness()["ready"]
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": "5"})


@router.get("/v1/ops/ready", summary="Readiness with a reason per check (operators)")
def ops_ready(service: ServiceDep, who: OperatorDep):
    """Every check with its detail, run now: store, model backend, promoted adapter, and the work
    running beside answering. Only for users in POLICYRAG_OPERATOR_GROUPS."""
    report = service.readiness(fresh=True)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)


@router.get("/v1/status", summary="What answers you now, and what runs beside it")
def status(service: ServiceDep, who: PrincipalDep) -> dict:
    """For the chat page's banner: the model answering (base or adapter version) and the progress
    of background work such as an adapter being trained. Nothing about the index or servers."""
    try:
        adapter = service.pipeline.current_adapter()
        serving = f"adapter {adapter.version}" if adapter else "the base model"
    except PolicyRagError:
        serving = "unavailable"
    work = service.background.as_dict() if service.background is not None else None
    if work is not None:
        # a failure's text is for operators (/v1/ops/ready): it can name paths and servers
        work = {**work, "detail": describe_work(work) if work["state"] != "failed" else f"{work['title']}: failed",
                "outcome": work["outcome"] if work["state"] != "failed" else ""}
    return {"serving": serving, "background": work}


@router.get("/metrics", summary="Prometheus metrics (the metrics token, an operator, or loopback)")
def metrics(service: ServiceDep, allowed: MetricsAccessDep) -> Response:
    """Counters and histograms in the Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def chat_page() -> HTMLResponse:
    return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))
