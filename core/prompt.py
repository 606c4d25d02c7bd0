"""The system prompt and the rendering of retrieved passages: defined once, used by tuning
(training pairs) and by answering, so the model is trained on exactly what it will see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = """\
Answer questions about company policy from the passages only, as one JSON object with keys status, answer, citations, reason.
answered: answer in one or two sentences; citations [{"id": passage id, "quote": exact words from it}]; reason null.
refused (answer null, citations []): reason "no_authorized_source" if no passage is on the subject, "not_in_policy" if none says this point, "out_of_scope" if not about policy.
escalate (reason "needs_human"): the asker's own case (discipline, health, pay dispute, complaint); answer names the team to contact."""

NO_PASSAGES = "(no passages)"


@dataclass(frozen=True)
class PromptPassage:
    """What the prompt shows of a passage; `retrieval.retriever.Passage` fits this shape."""

    citation_id: str
    title: str
    section_path: tuple[str, ...]
    text: str


def render_passages(passages: Sequence[PromptPassage]) -> str:
    if not passages:
        return NO_PASSAGES
    blocks = []
    for passage in passages:
        where = " > ".join((passage.title, *passage.section_path))
        blocks.append(f"[{passage.citation_id}] {where}\n{passage.text.strip()}")
    return "\n\n".join(blocks)


def render_user_message(question: str, passages: Sequence[PromptPassage]) -> str:
    return f"Passages:\n{render_passages(passages)}\n\nQuestion: {question.strip()}"


def prompt_fingerprint() -> str:
    """Identifies the prompt an adapter was trained with (recorded in its manifest)."""
    import hashlib

    sample = render_user_message("Q?", [PromptPassage("d@v1#c0", "T", ("S",), "X")])
    return hashlib.sha256(f"{SYSTEM_PROMPT}\0{sample}".encode()).hexdigest()[:16]


def build_messages(question: str, passages: Sequence[PromptPassage]) -> list[dict[str, str]]:
    """Chat messages for the model (applied with the tokenizer's chat template)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_user_message(question, passages)},
    ]
