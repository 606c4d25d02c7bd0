"""Citation verification: every cited id was retrieved for this user and every quote is a
verbatim substring of that passage. Used to check training targets and model answers alike.

An answer's own text is checked too: every figure, e-mail address and URL it states must occur in
one of its cited quotes; otherwise the answer text is replaced by those quotes (the policy's own
words), so a number or a link the model made up never reaches a user."""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.contract import (
    MAX_CITATIONS,
    Answered,
    Citation,
    Escalated,
    Refused,
    refusal,
    shorten,
)
from core.prompt import PromptPassage, number_sentences
from core.references import fit_quote


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


# URLs, e-mail addresses, then figures (digits with their inner separators: 3.4, 1,000, 09/28)
_FACT = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\d+(?:[.,:/]\d+)*")


def _facts(text: str) -> list[str]:
    return [m.group(0).rstrip(".,;:") for m in _FACT.finditer(text)]


def unsupported_facts(answer: Answered | Refused | Escalated) -> list[str]:
    """Figures, e-mail addresses and URLs in the answer text that no cited quote contains."""
    if not answer.answer:
        return []
    quoted = {fact.lower() for citation in answer.citations for fact in _facts(citation.quote)}
    return [fact for fact in dict.fromkeys(_facts(answer.answer)) if fact.lower() not in quoted]


def quoted_answer(answer: Answered) -> str:
    """The answer in the policy's own words: its quotes, joined, cut at a word boundary."""
    return shorten(" ".join(dict.fromkeys(c.quote for c in answer.citations)))


def repair_answer(
    answer: Answered | Refused | Escalated, passages: Sequence[PromptPassage]
) -> tuple[Answered | Refused | Escalated, list[str]]:
    """Drop citations that do not verify; an `answered` left with none becomes a refusal; an
    `answered` whose text states a figure, address or URL no cited quote holds gets its quotes
    as its text."""
    problems = citation_problems(answer, passages)
    if problems:
        by_id = {passage.citation_id: passage for passage in passages}
        kept = [c for c in answer.citations if c.id in by_id and c.quote in by_id[c.id].text]
        if isinstance(answer, Answered) and not kept:
            return refusal("not_in_policy"), problems
        answer = answer.model_copy(update={"citations": kept})
    if isinstance(answer, Answered):
        facts = unsupported_facts(answer)
        if facts:
            cited = _cite_facts(answer, passages)
            named = ", ".join(repr(f) for f in facts[:4])
            if cited is not None:
                problems.append(f"the answer states {named}, which no cited quote holds; cited the sentences that do")
                answer = cited
            else:
                problems.append(f"the answer states {named}, which no passage shown holds; answered with the quotes instead")
                answer = answer.model_copy(update={"answer": quoted_answer(answer)})
    return answer, problems


def _cite_facts(answer: Answered, passages: Sequence[PromptPassage]) -> Answered | None:
    """The answer with a citation added for each unsupported fact: the first sentence that holds
    it, in the cited passages first (one citation may support several facts); None when a fact is
    in no sentence or the citations run out."""
    cited_ids = {c.id for c in answer.citations}
    holders = [(s.citation_id, quote, {f.lower() for f in _facts(quote)})
               for s in sorted(number_sentences(passages), key=lambda s: s.citation_id not in cited_ids)
               for quote in [fit_quote(s.text)]]
    citations = list(answer.citations)
    quoted = {f.lower() for c in citations for f in _facts(c.quote)}
    for fact in unsupported_facts(answer):
        if fact.lower() in quoted:  # a sentence cited for an earlier fact holds it too
            continue
        holder = next((h for h in holders if fact.lower() in h[2]), None)
        if holder is None or len(citations) >= MAX_CITATIONS:
            return None
        citations.append(Citation(id=holder[0], quote=holder[1]))
        quoted |= holder[2]
    return answer.model_copy(update={"citations": citations})
