"""Operations endpoints: liveness, readiness, Prometheus metrics, and the chat page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from answer.deps import ServiceDep
from core.errors import PolicyRagError

STATIC = Path(__file__).parent / "static"

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", summary="Store, model backend and promoted adapter reachable")
def readyz(service: ServiceDep):
    """Readiness, with a reason per check (503 with Retry-After when not ready)."""
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
        checks["background"] = {"ok": work["state"] != "failed", "detail": _describe(work), **work}
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": "5"})


def _describe(work: dict[str, Any]) -> str:
    if work["state"] != "running":
        return f"{work['title']}: {work['outcome']}"
    eta = f", about {work['eta_s'] // 60 + 1} min left" if work["eta_s"] is not None else ""
    return f"{work['title']}: {work['stage']}{eta}"


@router.get("/metrics", summary="Prometheus metrics")
def metrics(service: ServiceDep) -> Response:
    """Counters and histograms in the Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def chat_page() -> HTMLResponse:
    return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))
