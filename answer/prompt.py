"""The system prompt and the rendering of retrieved passages: defined once, used by tuning
(training pairs) and by answering, so the model is trained on exactly what it will see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = """\
You answer employees' questions about the company's policies. Use only the passages given.
Reply with one JSON object and nothing else:
{"status": "answered", "answer": "<one or two short sentences>", "citations": [{"id": "<passage id>", "quote": "<exact words copied from that passage>"}], "reason": null}
If the passages do not answer the question, refuse: {"status": "refused", "answer": null, "citations": [], "reason": R}
with R = "no_authorized_source" when no passage covers the subject, "not_in_policy" when they cover it but do not say this, "out_of_scope" when it is not a policy question.
If the question is about the asker's own case (discipline, health, a pay dispute, a complaint), reply with "status": "escalate", "reason": "needs_human" and say which team to contact."""

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


def build_messages(question: str, passages: Sequence[PromptPassage]) -> list[dict[str, str]]:
    """Chat messages for the model (applied with the tokenizer's chat template)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_user_message(question, passages)},
    ]
