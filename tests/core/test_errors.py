"""core/errors.py: every error class carries its own HTTP status, and the service answers with it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from core.errors import DiskFull, PolicyRagError

PACKAGES = ("core", "retrieval", "ingest", "tuning", "answer", "eval", "policyrag")
# 500 on purpose: a failure of ours that is never a request's fault (each says why in its class)
DELIBERATE_500 = {"BenchError"}


def every_error_class() -> list[type[PolicyRagError]]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    seen, todo = [], [PolicyRagError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in PACKAGES and sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


ERRORS = every_error_class()


def test_the_error_classes_of_every_stage_are_found():
    names = {cls.__name__ for cls in ERRORS}
    assert {"ConfigError", "StoreError", "DiskFull", "UnknownUser", "AdapterNotFound", "Overloaded",
            "Unauthenticated", "BackendUnavailable", "AnswerFormatError", "BenchError"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_no_error_class_falls_through_to_500_by_accident(cls):
    # the status comes from the class itself or a parent below the root, never the root's default
    owner = next(klass for klass in cls.__mro__ if "http_status" in vars(klass))
    assert owner is not PolicyRagError, f"{cls.__name__} inherits the root's 500: give it an http_status"
    assert 400 <= cls.http_status <= 599
    if cls.http_status == 500:
        assert cls.__name__ in DELIBERATE_500, f"{cls.__name__} answers 500: say why or choose a status"
    # a stable machine-readable code of its own or its parent's, never the root's
    assert cls.code != PolicyRagError.code


def test_the_service_answers_each_error_with_its_class_status_and_code():
    from answer.errors import policyrag_error_response

    for cls in ERRORS:
        exc = cls.__new__(cls)
        Exception.__init__(exc, "boom")
        response = policyrag_error_response(exc)
        assert response.status_code == cls.http_status, cls
    # the finding that started this: a full disk is a store error (503), not a 500
    assert policyrag_error_response(DiskFull("no space")).status_code == 503
    retry = policyrag_error_response(DiskFull("no space")).headers
    assert retry["retry-after"] == "2"
