"""`policyrag adapters drill`: a rollback drill against the live adapter, through the real
answer pipeline.

It answers one question with the promoted adapter V, rolls back to the previously promoted P,
answers again (the answer must come from P), promotes V again and answers a third time (from V).
The outcome, each step's adapter and timing go to the registry's event log, which
`policyrag checklist` reads. While the drill runs (seconds), the live adapter is P: run it when a
short switch to the previous adapter is acceptable, as any rollback drill.
"""

from __future__ import annotations

import time
from typing import Any

from core.errors import ConfigError

DRILL_QUESTION = "How many days of annual leave can I carry over into next year?"


def rollback_drill(service, *, user: str | None = None, question: str = DRILL_QUESTION) -> dict[str, Any]:
    pipeline = service.pipeline
    registry = pipeline.registry
    history = registry.promotion_history()
    if not history:
        raise ConfigError("no adapter is promoted: nothing to drill; promote one with `policyrag adapters promote V`")
    if len(history) < 2:
        raise ConfigError(f"{history[-1]} is the only adapter ever promoted, so a rollback has nowhere to go; "
                          "promote an earlier adapter, then this one again, and re-run the drill")
    live, previous = history[-1], history[-2]
    directory = pipeline.retriever.directory
    principal = pipeline.retriever.principal(user or next(iter(directory.users)))
    steps: list[dict[str, Any]] = []

    def step(name: str, expected: str) -> None:
        started = time.perf_counter()
        result = pipeline.answer(principal, question, endpoint="drill")
        served = result.versions.get("adapter")
        steps.append({"step": name, "expected": expected, "served": served, "status": result.status,
                      "model_called": result.model_called, "ok": served == expected or not result.model_called,
                      "seconds": round(time.perf_counter() - started, 2)})

    started = time.perf_counter()
    try:
        step("before", live)
        registry.rollback()
        step("rolled back", previous)
        registry.promote(live, reason="rollback drill: restore")
        step("restored", live)
    finally:
        if registry.promoted_version() != live:  # never leave the previous adapter live
            registry.promote(live, reason="rollback drill: restore after a failed step")
    answered = all(s["model_called"] for s in steps)
    ok = answered and all(s["ok"] for s in steps)
    outcome = {"action": "drill", "version": live, "rolled_back_to": previous, "ok": ok, "user": principal.user_id,
               "question": question, "steps": steps, "seconds": round(time.perf_counter() - started, 1)}
    if not answered:
        outcome["problem"] = "the question was refused before the model ran, so the served adapter was not observed"
    registry.record(outcome)
    return outcome
