"""The answer service's own errors, and the one JSON error shape of every response.

Each error class carries its HTTP status (`http_status`, see core/errors.py); the handlers in
answer/app.py read it from the class, so there is no table to keep in step. The body is the
OpenAI SDK's shape: `{"error": {"code", "message", "type"}}`.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from core.errors import PolicyRagError


class Overloaded(PolicyRagError):
    code = "overloaded"
    http_status = 429


class ConversationNotFound(PolicyRagError):
    code = "conversation_not_found"
    http_status = 404


class InvalidRequest(PolicyRagError):
    code = "invalid_request"
    http_status = 422


class QuestionTooLong(PolicyRagError):
    code = "question_too_long"
    http_status = 422


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"code": code, "message": message, "type": kind}}, status_code=status, headers=headers)


def policyrag_error_response(exc: PolicyRagError) -> JSONResponse:
    """The response for an error raised on purpose: its class's status; clients are told when
    to retry (429, 503) and how to authenticate (401)."""
    status = exc.http_status
    headers = {"Retry-After": "2"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.code, str(exc), status, headers)
