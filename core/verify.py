"""Citation verification: every cited id was retrieved for this user and every quote is a
verbatim substring of that passage. Used to check training targets and model answers alike."""

from __future__ import annotations

from collections.abc import Sequence

from core.contract import Answered, Escalated, Refused, refusal
from core.prompt import PromptPassage


def citation_problems(answer: Answered | Refused | Escalated, passages: Sequence[PromptPassage]) -> list[str]:
    """What is wrong with the answer's citations, one line each; empty when all verify."""
    by_id = {passage.citation_id: passage for passage in passages}
    problems = []
    for citation in answer.citations:
        passage = by_id.get(citation.id)
        if passage is None:
            problems.append(f"citation {citation.id!r} is not one of the retrieved passages")
        elif citation.quote not in passage.text:
            problems.append(f"quote {citation.quote[:60]!r} is not verbatim in {citation.id}")
    return problems


def repair_answer(
    answer: Answered | Refused | Escalated, passages: Sequence[PromptPassage]
) -> tuple[Answered | Refused | Escalated, list[str]]:
    """Drop citations that do not verify; an `answered` left with none becomes a refusal."""
    problems = citation_problems(answer, passages)
    if not problems:
        return answer, []
    by_id = {passage.citation_id: passage for passage in passages}
    kept = [c for c in answer.citations if c.id in by_id and c.quote in by_id[c.id].text]
    if isinstance(answer, Answered) and not kept:
        return refusal("not_in_policy"), problems
    return answer.model_copy(update={"citations": kept}), problems
