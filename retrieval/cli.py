"""`policyrag search` (mounted on the root app in policyrag/cli.py): what a user would retrieve."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from core.errors import ConfigError
from core.settings import get_settings
from core.terminal import console


def search_command(
    question: Annotated[str, typer.Argument(help="the question or search terms")],
    as_user: Annotated[str, typer.Option("--as", help="user id from the directory")],
    k: Annotated[int, typer.Option("--k", min=1, max=50)] = 5,
    mode: Annotated[str, typer.Option(help="hybrid | dense | sparse")] = "hybrid",
    doc: Annotated[list[str] | None, typer.Option(help="only these document ids")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show exactly the passages USER would get for QUESTION."""
    from dataclasses import asdict

    from retrieval.acl import SearchFilters
    from retrieval.retriever import Retriever

    if mode not in ("hybrid", "dense", "sparse"):
        raise ConfigError(f"--mode {mode!r} is not one of hybrid, dense, sparse")
    settings = get_settings()
    retriever = Retriever.from_settings(settings)
    try:
        passages = retriever.search(
            question, as_user, k=k, mode=mode, filters=SearchFilters(doc_ids=tuple(doc)) if doc else None
        )
    finally:
        retriever.store.close()
    if as_json:
        console.print_json(json.dumps(
            [{**asdict(p), "effective_date": p.effective_date.isoformat(), "label": p.label} for p in passages]
        ))
        return
    if not passages:
        console.print(f"no passage {as_user} may read is relevant enough (score floor "
                      f"{settings.retrieval_score_floor})")
        return
    table = Table(title=f"what {as_user} gets", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("citation")
    table.add_column("section")
    table.add_column("score", justify="right")
    table.add_column("text")
    for i, p in enumerate(passages, 1):
        rel = f"{p.score:.4f}" + (f"\ncos {p.relevance:.2f}" if p.relevance is not None else "")
        table.add_row(str(i), p.citation_id, p.label, rel, p.text[:300])
    console.print(table)
