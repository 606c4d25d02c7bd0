"""Fixtures of the answer-service tests (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from answer.app import build_service
from core.settings import Settings
from tests.answer.helpers import copy_data


@pytest.fixture(scope="module")
def make_service(answer_data, local_backend, embedder, tmp_path_factory):
    """A private answer service on a copy of the answer data (its own store, audit log and
    settings), sharing the session's model and embedder."""
    opened = []

    def factory(name: str, **overrides):
        data = copy_data(answer_data, tmp_path_factory.mktemp(name) / "data")
        svc = build_service(Settings(data_dir=data, **overrides), backend=local_backend, embedder=embedder)
        opened.append(svc)
        return svc

    yield factory
    for svc in opened:
        svc.pipeline.retriever.store.close()  # idempotent: a test may have closed it already


@pytest.fixture(scope="module")
def refusing_service(make_service):
    """The real service with the retrieval floor raised so that no question retrieves a passage:
    every request is refused without the model. For fuzzing the HTTP layer, auth, validation,
    retrieval and the audit log without waiting seconds per generated question."""
    return make_service("refusing", retrieval_score_floor=0.99, answer_max_tokens=32)
