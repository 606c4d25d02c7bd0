"""`policyrag report`: the eval run as a self-contained HTML file and a PDF for legal.

Plots are inline SVG (no script, no external file), so the HTML opens anywhere and prints the
same; the PDF is printed from that HTML by headless Chromium (Debian's `chromium`, through
Playwright), so both show exactly the same thing.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from eval.eval_run import EvalRun
from eval.gate import run_failures
from eval.metrics import STATUSES, percentile
from eval.review import review_status
from eval.runner import load_run, runs_dir

METRICS = [
    ("schema_validity", "Schema validity (constrained)", "pct"),
    ("schema_validity_unconstrained", "Schema validity (unconstrained)", "pct"),
    ("status_accuracy", "Status accuracy", "pct"),
    ("reason_accuracy", "Status + reason accuracy", "pct"),
    ("exact_match", "Answer exact match", "pct"),
    ("token_f1", "Answer token F1", "num"),
    ("citation_precision", "Citation precision", "pct"),
    ("citation_recall", "Citation recall", "pct"),
    ("quote_validity", "Quote validity (before repair)", "pct"),
    ("repaired_share", "Answers repaired", "pct"),
    ("acl_leaks", "ACL leaks (must be 0)", "int"),
    ("refusal_precision", "Refusal precision", "pct"),
    ("refusal_recall", "Refusal recall", "pct"),
    ("escalation_precision", "Escalation precision", "pct"),
    ("escalation_recall", "Escalation recall", "pct"),
    ("answered_with_source", "Answerable: answered, an expected source cited", "pct"),
    ("retrieval_recall_at_k", "Retrieval recall@k", "pct"),
    ("retrieval_mrr", "Retrieval MRR", "num"),
    ("retrieval_ndcg", "Retrieval nDCG", "num"),
    ("ragas_rouge_l", "ragas ROUGE-L (answer)", "num"),
    ("ragas_string_similarity", "ragas string similarity (answer)", "num"),
    ("ragas_context_precision", "ragas context precision (non-LLM)", "num"),
    ("ragas_context_recall", "ragas context recall (non-LLM)", "num"),
    ("ragas_faithfulness", "ragas faithfulness (judged)", "num"),
    ("ragas_response_relevancy", "ragas response relevancy (judged)", "num"),
    ("ragas_llm_context_precision", "ragas context precision (judged)", "num"),
    ("ragas_llm_context_recall", "ragas context recall (judged)", "num"),
    ("latency_p50_ms", "Latency p50 (ms)", "int"),
    ("latency_p95_ms", "Latency p95 (ms)", "int"),
    ("tokens_per_answer", "Tokens per answer", "num"),
]
LOWER_IS_BETTER = {"acl_leaks", "latency_p50_ms", "latency_p95_ms", "repaired_share", "tokens_per_answer"}


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{value:,.0f}"
    return f"{value:.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _forms_table(by_form: dict[str, dict]) -> str:
    """Per question form (situation first, yes/no, number, deadline, follow-up) and the items of
    the set as first locked ("original"), so a grown set is read against the original one."""
    if set(by_form) <= {"original"}:
        return ""

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{f['items']}</td><td>{pct(f['status_accuracy'])}</td>"
        f"<td>{pct(f['answered_with_source'])}</td><td>{num(f['token_f1'])}</td></tr>"
        for name, f in sorted(by_form.items(), key=lambda kv: (kv[0] != "original", kv[0])))
    return ("<h2>Per question form</h2><table><tr><th>form</th><th>items</th><th>status accuracy</th>"
            f"<th>answerable answered with a right source</th><th>token F1</th></tr>{rows}</table>")


def _bars(categories: dict[str, dict], baseline: dict[str, dict] | None) -> str:
    """Per-category status accuracy: one bar per category (baseline as a thin grey bar)."""
    width, row_h, left = 640, 26, 150
    names = sorted(categories)
    height = row_h * len(names) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="status accuracy per category">']
    for i, name in enumerate(names):
        y = 10 + i * row_h
        value = categories[name]["status_accuracy"] or 0.0
        bar = (width - left - 60) * value
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12">{_e(name)} ({categories[name]["items"]})</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="14" fill="#1f5fbf"/>')
        if baseline and name in baseline:
            b = (width - left - 60) * (baseline[name]["status_accuracy"] or 0.0)
            parts.append(f'<rect x="{left}" y="{y + 18}" width="{b:.1f}" height="4" fill="#999"/>')
        parts.append(f'<text x="{left + bar + 6:.1f}" y="{y + 15}" font-size="12">{100 * value:.0f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(latencies_ms: list[float]) -> str:
    if not latencies_ms:
        return "<p>No latencies.</p>"
    width, height, left, bottom = 640, 200, 40, 30
    seconds = [v / 1000 for v in latencies_ms]
    top = max(seconds) or 1.0
    bins = 20
    counts = [0] * bins
    for s in seconds:
        counts[min(bins - 1, int(s / top * bins))] += 1
    peak = max(counts)
    bw = (width - left - 10) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="latency distribution">']
    for i, c in enumerate(counts):
        h = (height - bottom - 10) * c / peak
        parts.append(f'<rect x="{left + i * bw:.1f}" y="{height - bottom - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#5b8fd9"/>')
    for frac in (0, 0.5, 1):
        x = left + frac * (width - left - 10)
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" font-size="11" text-anchor="middle">{top * frac:.1f} s</text>')
    p50, p95 = percentile(seconds, 0.5), percentile(seconds, 0.95)
    for n, (label, v) in enumerate((("p50", p50), ("p95", p95))):
        x = left + v / top * (width - left - 10)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="5" y2="{height - bottom}" stroke="#b00020" stroke-dasharray="4 3"/>'
                     f'<text x="{x + 3:.1f}" y="{15 + 14 * n}" font-size="11" fill="#b00020">{label} {v:.1f} s</text>')
    parts.append(f'<text x="{left}" y="{height - bottom + 2}" font-size="10" text-anchor="end">0</text>'
                 f'<text x="{left - 4}" y="14" font-size="10" text-anchor="end">{peak}</text></svg>')
    return "".join(parts)


def _confusion(confusion: dict[str, dict[str, int]]) -> str:
    total = max(1, max(v for row in confusion.values() for v in row.values()))
    head = "".join(f"<th>got {s}</th>" for s in STATUSES)
    rows = []
    for expected in STATUSES:
        cells = []
        for got in STATUSES:
            n = confusion[expected][got]
            shade = 0.12 + 0.75 * n / total if n else 0
            colour = "31,95,191" if expected == got else "176,0,32"
            cells.append(f'<td style="background: rgba({colour},{shade:.2f})">{n}</td>')
        rows.append(f"<tr><th>expected {expected}</th>{''.join(cells)}</tr>")
    return f'<table class="confusion"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def _failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["status_ok"] or r["leaks"] or (r.get("citation_recall") == 0.0)]


def build_html(settings: Settings, run: EvalRun, rows: list[dict[str, Any]]) -> str:
    s, b = run.summary, run.baseline_summary
    from tuning.registry import AdapterRegistry

    promoted = AdapterRegistry(settings.adapters_dir).promoted_version()
    failures = run_failures(settings, run, promoted)
    review = review_status(settings, run.run_id)
    if not run.complete:
        failures.append(f"partial run: {run.set.evaluated} of {run.set.items} items")
    verdict_ok = not failures
    verdict = (f"PASS — adapter {run.adapter} meets the promotion gate" if verdict_ok else
               f"FAIL — adapter {run.adapter} does not meet the promotion gate: " + "; ".join(failures))

    v = run.versions
    base = v.base_model or {}
    versions = [
        ("Base model", f"{base.get('name', '?')} (GGUF sha256 {str(base.get('source_sha256') or '–')[:16]}…)"),
        ("Adapter", run.adapter), ("Training dataset", str(v.dataset or "–")[:16]),
        ("Eval set", f"{run.set.name} · {run.set.items} items · sha256 {run.set.hash[:16]}…"),
        ("Corpus", f"{len(v.documents)} documents · fingerprint {v.corpus}"),
        ("Prompt", v.prompt), ("Backend", v.backend), ("Run", f"{run.run_id} at {run.at}"),
        ("Baseline", run.baseline or "none"),
    ]
    metric_rows = []
    for key, label, kind in METRICS:
        value = s.get(key)
        if value is None and (not b or b.get(key) is None):
            continue
        base_value = b.get(key) if b else None
        delta = ""
        if base_value is not None and value is not None:
            d = value - base_value
            better = (d < 0) if key in LOWER_IS_BETTER else (d > 0)
            cls = "up" if better and d else ("down" if d else "")
            delta = f'<td class="{cls}">{"+" if d > 0 else ""}{_fmt(d, kind)}</td>'
        else:
            delta = "<td></td>"
        metric_rows.append(f"<tr><td>{_e(label)}</td><td>{_fmt(value, kind)}</td>"
                           f"<td>{_fmt(base_value, kind) if b else ''}</td>{delta}</tr>")
    candidate_rows = [r for r in rows if r.get("run", "candidate") == "candidate"]
    failed = _failed(candidate_rows)
    failed_html = []
    for r in failed:
        expected = r["expected_status"] + (f" ({r['expected_reason']})" if r["expected_reason"] else "")
        got = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        sources = ", ".join(f"{x['doc_id']} › {' › '.join(x['section'])}" if x["section"] else x["doc_id"] for x in r["expected_sources"])
        cites = "".join(f"<li><b>{_e(c['label'])}</b>: “{_e(c['quote'])}”</li>" for c in r["citations"]) or "<li>none</li>"
        turns = "".join(f"<div class='turn'>earlier: {_e(t)}</div>" for t in r["turns"])
        leak = f"<p class='leak'>LEAK: {_e(', '.join(r['leaks']))}</p>" if r["leaks"] else ""
        failed_html.append(
            f"<div class='item'><h4>{_e(r['id'])} · {_e(r['category'])} · asked by {_e(r['user'])}</h4>{turns}"
            f"<p class='q'>{_e(r['question'])}</p>{leak}"
            f"<table class='kv'><tr><th>expected</th><td>{_e(expected)}{': ' + _e(r['expected_answer']) if r['expected_answer'] else ''}"
            f"{'<br><small>sources: ' + _e(sources) + '</small>' if sources else ''}</td></tr>"
            f"<tr><th>got</th><td>{_e(got)}{': ' + _e(r['answer']) if r['answer'] else ''}</td></tr>"
            f"<tr><th>cited</th><td><ul>{cites}</ul></td></tr></table></div>")
    review_html = "<p>No human review imported for this run (<code>policyrag review export</code>).</p>"
    if review["exported"]:
        findings = "".join(f"<li><b>{_e(f['item_id'])}</b> ({_e(f['verdict'])}, {_e(f['reviewer'])}): {_e(f['finding'])}</li>"
                           for f in review["findings"]) or "<li>no written findings</li>"
        review_html = (f"<p>{review['reviewed']} of {review['items']} flagged items reviewed "
                       f"({'complete' if review['complete'] else 'incomplete'}); judged wrong: {review['wrong']}, unsure: "
                       f"{review.get('unsure', 0)}; reviewers: {_e(', '.join(review.get('reviewers', [])) or '–')}.</p><ul>{findings}</ul>")
    baseline_categories = (b or {}).get("by_category")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>policyrag eval report — {_e(run.adapter)}</title>
<style>
 body {{ font: 13px/1.45 "DejaVu Sans", system-ui, sans-serif; color: #1d2330; margin: 28px; }}
 h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 22px 0 8px; border-bottom: 1px solid #ccd; }}
 .verdict {{ padding: 10px 14px; border-radius: 6px; font-weight: bold; margin: 12px 0; }}
 .pass {{ background: #e3f4e6; color: #14532d; }} .fail {{ background: #fde8ea; color: #8b1020; }}
 table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #d5d9e0; padding: 3px 8px; text-align: left; vertical-align: top; }}
 th {{ background: #f1f3f7; }} .up {{ color: #14632d; }} .down {{ color: #b00020; }}
 .confusion td {{ text-align: center; min-width: 70px; }}
 .item {{ border: 1px solid #d5d9e0; border-radius: 6px; padding: 6px 10px; margin: 8px 0; page-break-inside: avoid; }}
 .item h4 {{ margin: 0 0 4px; font-size: 13px; }} .q {{ font-style: italic; margin: 2px 0 6px; }}
 .kv th {{ width: 70px; }} .kv ul {{ margin: 0; padding-left: 18px; }} .turn {{ color: #5d6677; }}
 .leak {{ color: #b00020; font-weight: bold; }} small {{ color: #5d6677; }}
 .grid {{ display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }}
</style></head><body>
<h1>Policy assistant — evaluation report</h1>
<div>Adapter <b>{_e(run.adapter)}</b> on {_e(run.set.name) + ' (external set)' if run.external else 'the locked eval set'} ({run.set.evaluated} items), {_e(run.at)}</div>
<div class="verdict {'pass' if verdict_ok else 'fail'}">{_e(verdict)}</div>
<h2>Versions</h2>
<table>{''.join(f'<tr><th>{_e(k)}</th><td>{_e(val)}</td></tr>' for k, val in versions)}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>{_e(run.adapter)}</th><th>{_e(run.baseline or '')}</th><th>delta</th></tr>{''.join(metric_rows)}</table>
<p><small>Gate thresholds: schema validity ≥ {settings.gate_min_schema_validity:.0%}, ACL leaks ≤ {settings.gate_max_acl_leaks},
refusal recall ≥ {settings.gate_min_refusal_recall:.0%}, status accuracy ≥ {settings.gate_min_status_accuracy:.0%}, no compared metric more than {settings.gate_max_regression:.0%} worse than the promoted adapter
({_e(promoted or 'none')}){', completed human review' if settings.gate_require_review else ''}.</small></p>
<p><small>{_judge_note(run)}</small></p>
<h2>Status confusion matrix</h2>
{_confusion(s['confusion'])}
<div class="grid"><div><h2>Status accuracy per category</h2>{_bars(s['by_category'], baseline_categories)}
{'<p><small>grey: baseline</small></p>' if baseline_categories else ''}</div>
<div><h2>Latency distribution</h2>{_histogram([r['latency_ms'] for r in candidate_rows])}</div></div>
{_forms_table(s.get('by_form') or {})}
<h2>Human review</h2>
{review_html}
<h2>Failed items ({len(failed)} of {len(candidate_rows)})</h2>
{''.join(failed_html) or '<p>None.</p>'}
</body></html>
"""


def _judge_note(run: EvalRun) -> str:
    """Which judge scored the LLM-judged ragas metrics, and what that is worth."""
    note = ("ragas non-LLM metrics: ROUGE-L and Levenshtein similarity against the expected answer; context "
            "precision/recall compare retrieved passages with the expected sources' text (string similarity ≥ 0.5). ")
    judge = run.judge
    if not judge:
        return _e(note + "LLM-judged ragas metrics: no judge configured (set POLICYRAG_EVAL_JUDGE_URL).")
    return _e(note + f"LLM-judged ragas metrics: judge {judge['model']} at {judge['url']}, {judge['mode']}, "
              f"{judge['items_judged']} answered items judged, {len(judge['failures'])} with a failed judge call. "
              "JSON-schema decoding makes the judge's output parseable, not correct: a judge much smaller than the "
              "answering model is a weak check; treat these figures as indicative and read the failed items.")


def write_report(settings: Settings, run_id: str | None = None, *, pdf: bool = True) -> tuple[Path, Path | None]:
    run, rows = load_run(settings, run_id)
    folder = runs_dir(settings) / run.run_id
    html_path = folder / "report.html"
    html_path.write_text(build_html(settings, run, rows), encoding="utf-8")
    pdf_path = None
    if pdf:
        pdf_path = folder / "report.pdf"
        print_pdf(html_path, pdf_path)
    return html_path, pdf_path


def print_pdf(html_path: Path, pdf_path: Path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        raise ConfigError("the PDF is printed by Debian's chromium, which is not installed (apt-get install chromium); "
                          "use --no-pdf for the HTML alone")
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags, headless=True)
        try:
            page = browser.new_page()
            page.goto(html_path.resolve().as_uri())
            page.pdf(path=str(pdf_path), format="A4", print_background=True,
                     margin={"top": "14mm", "bottom": "14mm", "left": "12mm", "right": "12mm"})
        finally:
            browser.close()

