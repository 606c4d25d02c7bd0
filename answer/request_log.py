"""One JSON line per request on the standard logging stack, and the request metrics.

    {"event": "request", "request_id": "…", "user": "alice", "method": "POST", "route": "/v1/hr/answer",
     "status": 200, "latency_ms": 812.4, "adapter": "v3", "at": "2026-11-29T10:00:00.000+00:00", ...}

The line is logged on the `answer.requests` logger when the response's last byte is sent (for a
stream, when the stream ends), so the latency is the whole request. `request_id` is the one in
the answer and the audit record (a client's `X-Request-ID`, when it is a short token, else a new
one), and it is returned in the `X-Request-ID` header. The user is the authenticated principal
(none before authentication); the adapter is the one that answered (`base` for the base model).
`policyrag serve` sends these lines to stderr through `JsonFormatter`; an operator who configures
logging themselves gets them as ordinary records with the fields as attributes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid

from answer.metrics import Metrics

logger = logging.getLogger("answer.requests")

_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._-]{8,64}$")
FIELDS = ("request_id", "user", "method", "route", "path", "status", "latency_ms", "adapter")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message and the request fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "at": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def log_json_to_stderr() -> None:
    """Request lines as JSON on stderr, unless logging was configured for them already."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class RequestLog:
    """Pure ASGI middleware (a BaseHTTPMiddleware would time a stream only to its first byte)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"")
        request_id = given.decode() if _CLIENT_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_logged(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, state, status, started)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            self._log(scope, state, 500, started)  # the error handler outside us answers 500
            raise

    def _log(self, scope, state, status: int, started: float) -> None:
        if state.get("logged"):
            return
        state["logged"] = True
        seconds = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        logger.info("request", extra={
            "request_id": state["request_id"], "user": state.get("user"), "method": scope.get("method"),
            "route": route, "path": scope.get("path"), "status": status,
            "latency_ms": round(seconds * 1000, 1), "adapter": state.get("adapter"),
        })
