import json

from rich.console import Console

from eval.bench_retrieval_quality import evaluate_set


def test_external_set_loader_counts_evidence_hits(tmp_path):
    docs = tmp_path / "set" / "docs"
    docs.mkdir(parents=True)
    (docs / "bikes.txt").write_text("Bicycle parking.\n\nBicycles may be parked in the basement cage.\n\nCars park outside.\n")
    (docs / "food.txt").write_text("Canteen.\n\nLunch is served from noon until two in the afternoon.\n")
    items = [
        {"id": "q1", "question": "Where can I park my bicycle?", "answer": "basement",
         "evidence": "Bicycles may be parked in the basement cage.", "doc_id": "bikes"},
        {"id": "q2", "question": "When is lunch served?", "answer": "noon",
         "evidence": [{"text": "served from noon until two", "doc_char_start": 20}], "doc_id": "food"},
        {"id": "q3", "question": "Is there a gym?", "answer": None, "evidence": [], "doc_id": "bikes"},
    ]
    (tmp_path / "set" / "qa.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    result = evaluate_set(tmp_path / "set", console=Console(quiet=True))
    assert result["questions_with_evidence"] == 2
    assert result["hit_rate"]["corpus/hybrid"]["@10"]["contained"] == 1.0
    assert result["hit_rate"]["corpus/dense"]["@1"]["contained"] == 1.0
    assert result["hit_rate"]["document/sparse"]["@10"]["contained"] == 1.0
