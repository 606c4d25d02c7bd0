"""Human review of an eval run's edge cases: metrics do not catch tone or a subtly wrong refusal.

`export` writes the items worth a person's look (failures, refusals, escalations, low retrieval
scores, items where the metrics disagree) as `review.csv` (to fill in) and `review.html` (to read);
`import` reads the reviewers' verdicts back into `review.json` beside the run, which the report
and the gate read.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from eval.runner import load_run, runs_dir

VERDICTS = ("ok", "wrong", "unsure")
COLUMNS = ("run_id", "item_id", "category", "flags", "user", "question", "expected", "got", "citations",
           "verdict", "finding", "reviewer")
LOW_RELEVANCE = 0.45


def flags(row: dict[str, Any]) -> list[str]:
    out = []
    if not row["status_ok"]:
        out.append("wrong status")
    if row["leaks"]:
        out.append("LEAK")
    if row["status"] == "refused":
        out.append("refusal")
    if row["status"] == "escalate":
        out.append("escalation")
    if row["passages"] and row["passages"][0].get("relevance", 1.0) < LOW_RELEVANCE:
        out.append("low retrieval score")
    f1 = row.get("token_f1")
    if row["status_ok"] and row["expected_status"] == "answered" and f1 is not None and f1 < 0.3:
        out.append("metrics disagree: right status, low overlap")
    if row["status_ok"] and row.get("citation_recall") == 0.0:
        out.append("metrics disagree: right status, wrong source")
    if row["repaired"]:
        out.append("repaired")
    return out


def _expected(row: dict[str, Any]) -> str:
    text = row["expected_status"] + (f" ({row['expected_reason']})" if row["expected_reason"] else "")
    if row["expected_answer"]:
        text += ": " + row["expected_answer"]
    return text


def _got(row: dict[str, Any]) -> str:
    return row["status"] + (f" ({row['reason']})" if row["reason"] else "") + (f": {row['answer']}" if row["answer"] else "")


def export_review(settings: Settings, run_id: str | None = None) -> tuple[Path, Path, int]:
    run, rows = load_run(settings, run_id)
    folder = runs_dir(settings) / run.run_id
    picked = [(row, flags(row)) for row in rows if row.get("run", "candidate") == "candidate"]
    picked = [(row, f) for row, f in picked if f]
    csv_path, html_path = folder / "review.csv", folder / "review.html"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row, f in picked:
            writer.writerow({
                "run_id": run.run_id, "item_id": row["id"], "category": row["category"], "flags": "; ".join(f),
                "user": row["user"], "question": " / ".join([*row["turns"], row["question"]]),
                "expected": _expected(row), "got": _got(row),
                "citations": " | ".join(f"{c['label']}: \"{c['quote']}\"" for c in row["citations"]),
                "verdict": "", "finding": "", "reviewer": "",
            })
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            row["id"], row["category"], "; ".join(f), row["user"], row["question"], _expected(row), _got(row),
            " | ".join(c["label"] for c in row["citations"]))) + "</tr>"
        for row, f in picked)
    html_path.write_text(
        "<!doctype html><meta charset='utf-8'><title>Review sheet</title>"
        "<style>body{font:14px system-ui;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 6px;vertical-align:top}th{background:#eee}</style>"
        f"<h1>Review sheet: run {html.escape(run.run_id)} (adapter {html.escape(run.adapter)})</h1>"
        f"<p>{len(picked)} items to review. Fill in <code>verdict</code> (ok / wrong / unsure), <code>finding</code> "
        f"and <code>reviewer</code> in <code>{csv_path.name}</code>, then run <code>policyrag review import</code>.</p>"
        "<table><tr><th>item</th><th>category</th><th>why</th><th>user</th><th>question</th><th>expected</th>"
        f"<th>got</th><th>citations</th></tr>{cells}</table>", encoding="utf-8")
    return csv_path, html_path, len(picked)


def import_review(settings: Settings, path: Path) -> dict[str, Any]:
    """Read a filled-in review sheet; every verdict is checked, nothing is half-imported."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise ConfigError(f"review sheet {path} not found") from None
    if not records or set(COLUMNS) - set(records[0]):
        raise ConfigError(f"review sheet {path} lacks the columns {', '.join(COLUMNS)}; export a fresh sheet")
    run_ids = {r["run_id"] for r in records}
    if len(run_ids) != 1:
        raise ConfigError(f"review sheet {path} mixes runs ({', '.join(sorted(run_ids))}); one sheet per run")
    run_id = run_ids.pop()
    verdicts = {}
    for line, r in enumerate(records, start=2):
        verdict = r["verdict"].strip().lower()
        if verdict and verdict not in VERDICTS:
            raise ConfigError(f"review sheet {path} line {line}: verdict {r['verdict']!r} must be one of {', '.join(VERDICTS)} or empty")
        if verdict and not r["reviewer"].strip():
            raise ConfigError(f"review sheet {path} line {line}: a verdict needs the reviewer's name")
        if verdict:
            verdicts[r["item_id"]] = {"verdict": verdict, "finding": r["finding"].strip(), "reviewer": r["reviewer"].strip()}
    folder = runs_dir(settings) / run_id
    if not (folder / "run.json").exists():
        raise ConfigError(f"review sheet {path} is for run {run_id}, which does not exist here")
    state = {"run_id": run_id, "items": len(records), "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "verdicts": verdicts}
    (folder / "review.json").write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    return review_status(settings, run_id)


def review_status(settings: Settings, run_id: str) -> dict[str, Any]:
    path = runs_dir(settings) / run_id / "review.json"
    if not path.exists():
        return {"run_id": run_id, "items": 0, "reviewed": 0, "complete": False, "wrong": 0, "findings": [], "exported": False}
    state = json.loads(path.read_text())
    verdicts = state["verdicts"]
    return {
        "run_id": run_id, "items": state["items"], "reviewed": len(verdicts),
        "complete": len(verdicts) == state["items"], "exported": True,
        "wrong": sum(v["verdict"] == "wrong" for v in verdicts.values()),
        "unsure": sum(v["verdict"] == "unsure" for v in verdicts.values()),
        "reviewers": sorted({v["reviewer"] for v in verdicts.values()}),
        "findings": [{"item_id": k, **v} for k, v in verdicts.items() if v["finding"]],
    }
