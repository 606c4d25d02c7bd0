import math

from retrieval.embed import DenseEmbedder, SparseEncoder


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
