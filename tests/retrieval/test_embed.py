import math

import numpy as np
import pytest

from retrieval.embed import DenseEmbedder, SparseEncoder
from tests.conftest import CORPUS


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_dense_vectors_are_unit_length_and_meaningful(embedder):
    leave, pay, query = embedder.embed([
        "Employees may carry over up to 8 days of unused annual leave.",
        "Band L5 UK pays between 78,000 and 96,000 pounds.",
        "How many holiday days can I carry over?",
    ])
    assert len(leave) == 384 and math.isclose(math.sqrt(cosine(leave, leave)), 1.0, rel_tol=1e-3)
    assert cosine(query, leave) > cosine(query, pay) + 0.1


def test_bf16_and_fp32_agree(embedder):
    fp32 = DenseEmbedder(embedder.model_path, dtype="float32")
    bf16 = DenseEmbedder(embedder.model_path, dtype="bfloat16")
    text = ["Gifts above GBP 50 must be declared in the gifts register within 5 days."]
    assert cosine(fp32.embed(text)[0], bf16.embed(text)[0]) > 0.99


def test_sparse_vectors_weight_terms_and_match_stems():
    enc = SparseEncoder()
    doc = enc.document("Carry-over of annual leave: carried days expire in March.")
    query = enc.query("carrying over leave")
    assert len(doc.indices) == len(doc.values) and all(v > 0 for v in doc.values)
    assert set(query.indices) & set(doc.indices)  # stemmed terms overlap


def _policy_paragraphs() -> list[str]:
    """Real texts: every paragraph of the shipped policies (headings, lists and prose)."""
    return [
        para.strip()
        for path in sorted(CORPUS.glob("*.md"))
        for para in path.read_text(encoding="utf-8").split("\n\n")
        if len(para.strip()) > 20
    ]


@pytest.fixture(scope="module")
def openvino(embedder, tmp_path_factory) -> DenseEmbedder:
    return DenseEmbedder(
        embedder.model_path, backend="openvino", cache_dir=tmp_path_factory.mktemp("models")
    )


@pytest.mark.slow
def test_openvino_vectors_agree_with_torch_on_real_texts(embedder, openvino):
    texts = _policy_paragraphs()
    assert len(texts) > 500
    fp32 = np.array(DenseEmbedder(embedder.model_path, dtype="float32").embed(texts))
    today = np.array(embedder.embed(texts))  # what ingest stored before (torch, settings dtype)
    ours = np.array(openvino.embed(texts))
    assert ours.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * fp32).sum(axis=1).min() >= 0.9999
    assert (ours * today).sum(axis=1).min() >= 0.999
    # the order of the texts in a call does not change a vector (length-sorted batches)
    assert np.allclose(np.array(openvino.embed(texts[::-1]))[::-1], ours, atol=1e-6)


@pytest.mark.slow
def test_openvino_model_is_converted_once_and_reused(openvino):
    openvino.embed(["Carry over up to 8 days."])
    (folder,) = (openvino.cache_dir / "minilm-openvino").iterdir()  # no staging folder left
    built = (folder / "model.bin").stat().st_mtime_ns
    again = DenseEmbedder(openvino.model_path, backend="openvino", cache_dir=openvino.cache_dir)
    assert again.embed(["Carry over up to 8 days."]) == openvino.embed(["Carry over up to 8 days."])
    assert (folder / "model.bin").stat().st_mtime_ns == built


@pytest.mark.slow
def test_openvino_streams_in_flight_return_each_vector_in_its_row(openvino):
    # batches finish out of order across streams; each row must still be its own text's vector
    texts = list(dict.fromkeys(_policy_paragraphs()))[:200]  # distinct, so a row mix-up shows
    one = DenseEmbedder(openvino.model_path, backend="openvino", cache_dir=openvino.cache_dir,
                        batch_size=8, streams=1)
    four = DenseEmbedder(openvino.model_path, backend="openvino", cache_dir=openvino.cache_dir,
                         batch_size=8, streams=4)
    a, b = np.array(one.embed(texts)), np.array(four.embed(texts))
    assert (a * b).sum(axis=1).min() >= 0.9999
    assert np.array_equal(np.argmax(b @ a.T, axis=1), np.arange(len(texts)))
