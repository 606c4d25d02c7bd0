"""Prometheus metrics of the answer service (exported at /metrics; deploy/ alerts on them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from answer.pipeline import AnswerResult


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

    def watch_audit(self, size_bytes) -> None:
        """Export the audit log's size, read at each scrape (records are never deleted: alert on it)."""
        Gauge("policyrag_audit_bytes", "bytes in the audit log, rotated files included", registry=self.registry
              ).set_function(size_bytes)

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
