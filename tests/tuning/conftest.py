"""The real corpus ingested once for the tuning tests (Qdrant Edge, closed after ingest so
each test opens its own retriever on it)."""

import shutil
from pathlib import Path

import pytest

from ingest.pipeline import Ingestor
from ingest.settings import Settings
from tests.conftest import CORPUS


@pytest.fixture(scope="session")
def corpus_data(tmp_path_factory, embedder, scrubber) -> Path:
    data = tmp_path_factory.mktemp("tuning") / "data"
    ingestor = Ingestor(Settings(data_dir=data), embedder=embedder, scrubber=scrubber)
    try:
        assert ingestor.run(CORPUS).ok
    finally:
        ingestor.close()
    return data


@pytest.fixture(scope="session")
def base_model_dir(corpus_data) -> Path:
    from ingest.provision import provision_base_model

    return Path(provision_base_model(Settings(data_dir=corpus_data)).path)


@pytest.fixture
def tuning_settings(corpus_data, tmp_path) -> Settings:
    """A private data dir: a copy of the ingested index and manifest, the converted base model
    linked (not copied), no gold set."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(corpus_data / "index", data / "index")
    shutil.copy2(corpus_data / "manifest.sqlite", data / "manifest.sqlite")
    if (corpus_data / "models").exists():
        (data / "models").symlink_to(corpus_data / "models")
    return Settings(data_dir=data, gold_set_file=tmp_path / "gold.jsonl")


@pytest.fixture
def corpus_retriever(tuning_settings, embedder):
    from retrieval.retriever import Retriever

    retriever = Retriever.from_settings(tuning_settings, embedder=embedder)
    yield retriever
    retriever.store.close()
