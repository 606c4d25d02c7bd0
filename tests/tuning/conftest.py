"""A retriever on a private copy of the ingested corpus (fixtures in tests/conftest.py)."""

import pytest


@pytest.fixture
def corpus_retriever(tuning_settings, embedder):
    from retrieval.retriever import Retriever

    retriever = Retriever.from_settings(tuning_settings, embedder=embedder)
    yield retriever
    retriever.store.close()
