"""What a route needs, declared as `Annotated` dependencies (the FastAPI template's `deps.py`):

    def hr_answer(body: HrAnswerRequest, who: PrincipalDep, service: ServiceDep) -> dict: ...

Tests swap any of them with `app.dependency_overrides`. The principal comes only from the
credential headers, never from a request body; it is also written into the request's state, so
the request log names the user.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from answer.auth import metrics_allowed, require_operator
from answer.pipeline import AnswerPipeline
from answer.service import Service
from core.settings import Settings
from retrieval.acl import Principal


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def get_settings(service: ServiceDep) -> Settings:
    return service.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_pipeline(service: ServiceDep) -> AnswerPipeline:
    return service.pipeline


PipelineDep = Annotated[AnswerPipeline, Depends(get_pipeline)]


def get_principal(
    request: Request,
    service: ServiceDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    principal = service.auth.principal_for(authorization, x_api_key)
    request.state.user = principal.user_id
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_operator(service: ServiceDep, principal: PrincipalDep) -> Principal:
    return require_operator(service.settings, principal)


OperatorDep = Annotated[Principal, Depends(get_operator)]


def check_metrics_access(
    request: Request,
    service: ServiceDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> bool:
    """The metrics token (Prometheus), a loopback client when no token is set, or an operator."""
    if metrics_allowed(service.settings, request.client.host if request.client else "", authorization):
        return True
    get_operator(service, get_principal(request, service, authorization, x_api_key))
    return True


MetricsAccessDep = Annotated[bool, Depends(check_metrics_access)]


def request_id(request: Request) -> str:
    """The id of this request in the request log, the audit log and the answer."""
    return request.state.request_id


RequestIdDep = Annotated[str, Depends(request_id)]
