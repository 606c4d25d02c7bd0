"""Eval: metrics, the gold set, a real run through the answer pipeline (local backend, tiny
adapter), the report (HTML + PDF printed by Chromium), human review and the promotion gate."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import ConfigError
from core.settings import PROJECT_ROOT, Settings, get_settings
from eval.gold import load_gold_set
from eval.metrics import (
    aggregate,
    citation_scores,
    exact_match,
    retrieval_scores,
    token_f1,
)
from tests.answer.helpers import (
    CARRY_OVER,
    CARRY_OVER_ANSWER,
    CARRY_OVER_QUOTE,
    RESTRICTED,
    copy_data,
    register_copy,
)

GOLD = PROJECT_ROOT / "policies" / "_eval" / "gold.jsonl"
runner = CliRunner()


def item(id, category, user, question, status, reason=None, answer=None, sources=(), forbidden=(), turns=()):
    return {"id": id, "category": category, "user": user, "question": question, "turns": list(turns),
            "expected": {"status": status, "reason": reason, "answer": answer, "sources": list(sources)},
            "forbidden": list(forbidden)}


LEAVE = {"doc_id": "leave-uk", "section": ["4. Carry-over", "4.2 Carry-over limits"], "quote": CARRY_OVER_QUOTE}
SMALL_SET = [
    item("a1", "answerable", "alice", CARRY_OVER, "answered", answer=CARRY_OVER_ANSWER, sources=[LEAVE]),
    item("r1", "restricted", "alice", RESTRICTED, "refused", "no_authorized_source",
         forbidden=["Salary Bands and Pay Review Guidelines", "Reward Team"]),
    # a deliberately strict item: the true answer contains "8 days", so the leak check must fire
    item("x1", "restricted", "alice", CARRY_OVER, "refused", "no_authorized_source", forbidden=["8 days"]),
]


def write_set(path: Path, items) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


# -- metrics ------------------------------------------------------------------------------------


def test_answer_overlap_metrics():
    assert exact_match("The limit is 8 days.", "limit is 8 days") == 1.0
    assert token_f1("up to 8 days", "8 days") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert token_f1("nothing shared", "8 days") == 0.0
    assert token_f1(None, "8 days") == 0.0


def test_retrieval_and_citation_metrics_match_by_document_and_section():
    hit = {"doc_id": "leave-uk", "section": ["4. Carry-over", "4.2 Carry-over limits"]}
    other = {"doc_id": "leave-uk", "section": ["5. Booking"]}
    src = {"doc_id": "leave-uk", "section": ["4.2 Carry-over limits"]}
    assert retrieval_scores([other, hit], [src], k=3) == {"recall_at_k": 1.0, "mrr": 0.5, "ndcg": pytest.approx(1 / 1.5849625)}
    assert retrieval_scores([other], [src], k=3)["recall_at_k"] == 0.0
    assert citation_scores([hit, other], [src]) == {"precision": 0.5, "recall": 1.0}
    assert citation_scores([], [src]) == {"precision": 0.0, "recall": 0.0}


def test_aggregate_counts_the_confusion_matrix_and_refusal_precision_recall():
    def row(expected, got, **kw):
        base = {"expected_status": expected, "status": got, "category": "c", "status_ok": expected == got,
                "reason_ok": expected == got, "schema_valid": True, "model_called": True, "repaired": False,
                "raw_citations": 1, "raw_valid_citations": 1, "exact_match": None, "token_f1": None,
                "citation_precision": None, "citation_recall": None, "leaks": [], "retrieval": None,
                "latency_ms": 100.0, "completion_tokens": 10}
        return {**base, **kw}

    s = aggregate([row("refused", "refused"), row("refused", "answered"), row("answered", "refused"),
                   row("answered", "answered", leaks=["x"])])
    assert s["confusion"]["refused"] == {"answered": 1, "refused": 1, "escalate": 0}
    assert (s["refusal_precision"], s["refusal_recall"], s["acl_leaks"]) == (0.5, 0.5, 1)
    assert s["status_accuracy"] == 0.5


# -- the gold set -------------------------------------------------------------------------------


def test_the_locked_gold_set_loads_and_covers_every_category():
    gold = load_gold_set(GOLD)
    assert len(gold.items) >= 200
    categories = {i.category for i in gold.items}
    assert categories == {"answerable", "not_in_policy", "no_source", "out_of_scope", "restricted",
                          "personal_case", "version_sensitive", "multi_turn"}
    assert all(i.turns for i in gold.items if i.category == "multi_turn")
    assert all(i.forbidden for i in gold.items if i.category == "restricted")


def test_bad_gold_lines_are_named(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(SMALL_SET[0]) + "\n{oops\n")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        load_gold_set(path)
    bad = dict(SMALL_SET[0], expected={"status": "answered", "answer": "x", "sources": []})
    write_set(path, [bad])
    with pytest.raises(ConfigError, match="line 1 is invalid"):
        load_gold_set(path)
    write_set(path, [SMALL_SET[0], SMALL_SET[0]])
    with pytest.raises(ConfigError, match="used twice"):
        load_gold_set(path)


def test_ragas_non_llm_metrics_score_answers_and_contexts():
    from eval.ragas_scores import add_ragas, summary

    passage = "Employees may carry over up to five days of unused annual leave into the next leave year."
    row = {"id": "a", "expected_status": "answered", "expected_answer": "Up to five days.", "query": "q", "question": "q"}
    rows = [
        {**row, "answer": "Up to five days.", "passages": [{"text": passage}, {"text": "Expenses need receipts."}]},
        {**row, "id": "b", "answer": "Receipts are needed.", "passages": [{"text": "Expenses need receipts."}, {"text": passage}]},
        {**row, "id": "c", "answer": None, "passages": []},
    ]
    info = add_ragas(rows, lambda r: [passage])
    right, wrong, none = (r["ragas"] for r in rows)
    assert right["rouge_l"] == 1.0 and right["string_similarity"] == 1.0 and wrong["rouge_l"] < 0.3
    assert right["context_precision"] > wrong["context_precision"]  # rank 1 vs rank 2 of the reference
    assert right["context_recall"] == wrong["context_recall"] == 1.0
    assert none["context_recall"] == 0.0 and none["rouge_l"] == 0.0  # nothing retrieved, nothing said
    assert info == {"items_judged": 0, "failures": []}
    assert summary(rows)["ragas_rouge_l"] == round((1.0 + wrong["rouge_l"]) / 3, 4)


# -- a real run, its report, review and the gate -----------------------------------------------


@pytest.fixture(scope="module")
def eval_run(service, tmp_path_factory):
    from eval.runner import run_eval

    root = tmp_path_factory.mktemp("eval")
    settings = Settings(data_dir=root / "data", gold_set_file=write_set(root / "gold.jsonl", SMALL_SET))
    out = run_eval(settings, service=service, adapter="v1", baseline="base")
    return settings, out


def test_a_run_scores_real_answers(eval_run):
    from eval.runner import load_run

    settings, out = eval_run
    run, rows = load_run(settings)
    assert run.run_id == out.run_id and run.complete and run.adapter == "v1"
    by_id = {r["id"]: r for r in rows if r["run"] == "candidate"}
    a1 = by_id["a1"]
    assert a1["status"] == "answered" and a1["citation_precision"] == 1.0 and a1["citation_recall"] == 1.0
    assert a1["retrieval"]["recall_at_k"] == 1.0 and a1["token_f1"] > 0.9
    r1 = by_id["r1"]
    assert r1["status"] == "refused" and not r1["model_called"] and r1["leaks"] == []
    assert by_id["x1"]["leaks"] == ["8 days"]  # the leak check fires on forbidden text
    s = out.summary
    assert s["acl_leaks"] == 1 and s["schema_validity"] == 1.0 and s["refusal_recall"] == 0.5
    assert out.baseline == "base" and out.baseline_summary["items"] == 3
    assert "status_accuracy" in out.deltas
    assert out.versions.eval_set == run.set.hash and len(out.versions.documents) == 29
    audit = (settings.data_dir / "eval" / "runs" / out.run_id / "audit" / "audit.jsonl").read_text()
    assert audit.count("\n") == 6  # the run's own audit trail, not the service's
    # ragas non-LLM metrics: the right answer from the right passage scores high; the reference
    # contexts are the expected section's text read from the store
    assert a1["ragas"]["rouge_l"] > 0.8 and a1["ragas"]["context_recall"] == 1.0
    assert a1["ragas"]["context_precision"] > 0.3
    assert r1["ragas"]["rouge_l"] is None and r1["ragas"]["context_recall"] is None  # nothing expected
    assert s["ragas_rouge_l"] == a1["ragas"]["rouge_l"] and s["ragas_faithfulness"] is None
    assert run.judge is None and "ragas_rouge_l" in out.baseline_summary


def test_the_gate_refuses_on_leaks_and_low_refusal_recall_and_without_a_run(eval_run):
    from eval.gate import gate_failures

    settings, _ = eval_run
    failures = gate_failures(settings, "v1", None)
    assert any("ACL leakage" in f for f in failures) and any("refusal recall" in f for f in failures)
    assert gate_failures(settings, "v7", None)[0].startswith("no complete eval of v7")
    changed = settings.model_copy(update={"gold_set_file": write_set(settings.data_dir / "g2.jsonl", SMALL_SET[:2])})
    assert "no complete eval" in gate_failures(changed, "v1", None)[0]  # the set changed: old runs do not count


def test_the_report_is_html_and_a_pdf_a_person_can_read(eval_run):
    from eval.report import write_report

    settings, out = eval_run
    html_path, pdf_path = write_report(settings)
    page = html_path.read_text()
    assert "FAIL — adapter v1" in page and "ACL leakage" in page and "<svg" in page
    assert "x1" in page and "8 days" in page  # the failed item with its question and answer
    text = subprocess.run(["pdftotext", str(pdf_path), "-"], capture_output=True, text=True, check=True).stdout
    assert "evaluation report" in text and "Status confusion matrix" in text and "x1 · restricted" in text


def test_review_sheets_round_trip_into_the_report_and_the_gate(eval_run):
    from eval.gate import gate_failures
    from eval.report import write_report
    from eval.review import export_review, import_review

    settings, out = eval_run
    csv_path, html_path, n = export_review(settings)
    rows = list(csv.DictReader(open(csv_path)))
    assert n == len(rows) >= 2 and {"r1", "x1"} <= {r["item_id"] for r in rows}
    assert "LEAK" in next(r for r in rows if r["item_id"] == "x1")["flags"]
    rows[0]["verdict"] = "maybe"
    with open(csv_path, "w", newline="") as h:
        w = csv.DictWriter(h, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ConfigError, match="must be one of"):
        import_review(settings, csv_path)
    for r in rows:
        r.update(verdict="ok", reviewer="Legal (J. Doe)", finding="")
    rows[-1].update(verdict="wrong", finding="the refusal should name the People Team")
    with open(csv_path, "w", newline="") as h:
        w = csv.DictWriter(h, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    status = import_review(settings, csv_path)
    assert status["complete"] and status["wrong"] == 1
    page = write_report(settings, pdf=False)[0].read_text()
    assert "should name the People Team" in page
    strict = settings.model_copy(update={"gate_require_review": True})
    assert not any("human review" in f for f in gate_failures(strict, "v1", None))


def test_adapters_promote_goes_through_the_gate_and_force_is_recorded(answer_data, tmp_path, monkeypatch):
    from policyrag.cli import app

    data = copy_data(answer_data, tmp_path / "data")
    monkeypatch.setenv("POLICYRAG_DATA_DIR", str(data))
    monkeypatch.setenv("POLICYRAG_GOLD_SET_FILE", str(write_set(tmp_path / "gold.jsonl", SMALL_SET)))
    get_settings.cache_clear()
    try:
        # v1 is promoted by the fixture; register v2 from the same files and try to promote it
        from tuning.registry import AdapterRegistry

        registry = AdapterRegistry(data / "adapters")
        assert register_copy(data) == "v2"
        refused = runner.invoke(app, ["adapters", "promote", "v2"])
        assert refused.exit_code == 2 and "no complete eval of v2" in refused.output
        assert runner.invoke(app, ["adapters", "promote", "v2", "--force"]).exit_code == 2  # a reason is required
        forced = runner.invoke(app, ["adapters", "promote", "v2", "--force", "--reason", "hotfix approved by legal"])
        assert forced.exit_code == 0, forced.output
        event = registry.events()[-1]
        assert event["forced"] and event["reason"] == "hotfix approved by legal" and event["gate_failures"]
        audit = [json.loads(line) for line in (data / "audit" / "audit.jsonl").read_text().splitlines()]
        assert audit[-1]["action"] == "promote" and audit[-1]["forced"] and audit[-1]["version"] == "v2"
    finally:
        get_settings.cache_clear()


def test_an_adapter_that_refuses_nearly_everything_does_not_pass():
    from eval.gate import summary_failures

    settings = Settings()
    refuses_all = {"schema_validity": 1.0, "acl_leaks": 0, "refusal_recall": 1.0, "status_accuracy": 0.35}
    assert [f for f in summary_failures(settings, refuses_all, None, None) if "status accuracy" in f]
    good = dict(refuses_all, status_accuracy=0.8)
    assert summary_failures(settings, good, None, None) == []
    worse = dict(good, status_accuracy=0.7)
    assert any("worse than promoted v1" in f for f in summary_failures(settings, worse, good, "v1"))


# -- external sets (a generic loader: docs/ + qa.jsonl, indexed on their own) ------------------


def make_external_set(root: Path) -> Path:
    folder = root / "tinyset"
    (folder / "docs").mkdir(parents=True)
    acme = "Acme collects your IP address and browser type when you visit the website, to keep the service secure."
    (folder / "docs" / "acme-com.txt").write_text(f"Acme privacy policy\n\n{acme}\n")
    (folder / "docs" / "zenith-com.txt").write_text(
        "Zenith privacy policy\n\nZenith keeps account records for seven years after an account is closed.\n")
    (folder / "documents.jsonl").write_text(json.dumps({"doc_id": "acme-com", "title": "acme.com"}) + "\n"
                                            + json.dumps({"doc_id": "zenith-com", "title": "zenith.com"}) + "\n")
    qa = [
        {"id": "q1", "question": "Does the company collect IP addresses?", "answer": "IP address and browser type",
         "evidence": acme, "doc_id": "acme-com"},
        {"id": "q2", "question": "Which arbitration venue applies to disputes?", "answer": None, "evidence": [],
         "doc_id": "zenith-com"},
    ]
    (folder / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return folder


def test_an_external_set_runs_through_the_pipeline_in_its_own_index(service, tmp_path):
    from eval.external import load_external_set, run_external, set_folders
    from eval.gate import gate_failures
    from eval.runner import load_run

    folder = make_external_set(tmp_path)
    settings = Settings(data_dir=tmp_path / "data")
    eval_set, evidence = load_external_set(folder)
    assert [i.expected.status for i in eval_set.items] == ["answered", "refused"]
    assert eval_set.items[0].question.endswith("(in acme.com)") and evidence["q1"]
    gold_points = service.pipeline.retriever.store.count()

    out = run_external(settings, folder, service=service, adapter="v1")
    run, rows = load_run(settings, out.run_id)
    assert run.set.name == "external:tinyset" and run.external["documents"] == 2
    q1 = next(r for r in rows if r["id"] == "q1")
    assert q1["passages"][0]["doc_id"] == "acme-com" and q1["retrieval"]["recall_at_k"] == 1.0
    assert q1["passages"][0]["label"].startswith(q1["passages"][0]["title"] + " v")
    assert q1["ragas"]["context_recall"] == 1.0  # the evidence, scrubbed like the index, is retrieved
    assert (settings.data_dir / "eval" / "external" / "tinyset" / "index").is_dir()
    assert service.pipeline.retriever.store.count() == gold_points  # the gold index is untouched
    assert "no complete eval" in gate_failures(settings, "v1", None)[0]  # never counts for the gate
    assert set_folders(tmp_path) == [folder]
    with pytest.raises(ConfigError, match="no external set"):
        set_folders(tmp_path / "data")


def _row(expected: str, got: str, *, forms=(), recall=None, f1=None) -> dict:
    return {"expected_status": expected, "status": got, "status_ok": expected == got, "reason_ok": expected == got,
            "model_called": True, "schema_valid": True, "retrieval": None, "raw_citations": 1, "raw_valid_citations": 1,
            "repaired": False, "leaks": [], "exact_match": 0.0 if expected == "answered" else None,
            "token_f1": f1, "citation_precision": recall, "citation_recall": recall, "latency_ms": 10.0,
            "completion_tokens": 5, "category": "answerable", "forms": list(forms)}


def test_escalation_answered_with_source_and_the_forms_are_measured_apart():
    rows = [
        _row("answered", "answered", recall=1.0, f1=0.8),                                  # original
        _row("answered", "refused", recall=0.0, f1=0.0),                                   # original
        _row("answered", "answered", forms=["situation_first", "yes_no"], recall=0.0, f1=0.5),  # wrong source
        _row("escalate", "escalate", forms=["situation_first"]),
        _row("escalate", "answered", forms=["situation_first"]),
        _row("refused", "escalate"),
    ]
    s = aggregate(rows)
    assert (s["escalation_recall"], s["escalation_precision"]) == (0.5, 0.5)
    assert s["answered_with_source"] == round(1 / 3, 4)  # answered AND an expected source cited
    forms = s["by_form"]
    assert forms["original"]["items"] == 3 and forms["original"]["answered_with_source"] == 0.5
    assert forms["situation_first"] == {"items": 3, "status_accuracy": round(2 / 3, 4), "answered_with_source": 0.0,
                                        "token_f1": 0.5}
    assert forms["yes_no"]["items"] == 1


def test_the_gold_set_holds_the_forms_users_ask_and_both_sides_of_the_situation_rule():
    """The original 286 items are unchanged (their bytes still hash to the lock at creation); the
    added items cover situation-first questions that are answered and ones that need a person."""
    import hashlib

    original = b"".join(GOLD.read_bytes().splitlines(keepends=True)[:286])
    assert hashlib.sha256(original).hexdigest() == "a800ebee80baf407a0322c008bbe510650c95fa1378fab2db1a1fe597943225a"
    items = load_gold_set(GOLD).items
    assert all(not i.forms for i in items[:286])
    situation = [i for i in items if "situation_first" in i.forms]
    assert sum(i.expected.status == "answered" for i in situation) >= 20
    assert sum(i.expected.status == "escalate" for i in situation) >= 8
    assert sum(i.expected.status == "answered" for i in items if "yes_no" in i.forms) >= 10
    assert {"number", "deadline", "follow_up"} <= {f for i in items for f in i.forms}


def test_a_restricted_title_that_a_readable_policy_names_is_no_leak_marker(service):
    """mike (managers) may read the pay bands, which say Executive Committee pay "is covered by the
    Executive Compensation Policy": quoting that is no leak. alice may read neither, so for her the
    title still marks a leak; the executive policy's citation prefix is a marker for both."""
    from eval.runner import corpus_docs, unreadable
    from retrieval.store import stored_chunks

    docs = corpus_docs(list(stored_chunks(service.pipeline.retriever.store)))
    assert "executive compensation policy" in docs["pay-bands"].text
    mike = unreadable(service.pipeline.retriever.principal("mike"), docs)
    alice = unreadable(service.pipeline.retriever.principal("alice"), docs)
    title = docs["executive-compensation"].title
    assert title == "Executive Compensation Policy"
    assert title not in mike and "executive-compensation@v" in mike
    assert title in alice and "pay-bands@v" in alice
