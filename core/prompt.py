"""The system prompt and the rendering of retrieved passages: defined once, used by tuning
(training pairs) and by answering, so the model is trained on exactly what it will see.

Passages are shown one sentence per line, each behind its id (`[s4]`), numbered across the
passages; the model cites those ids and the service writes the quotes (`core.references`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SYSTEM_PROMPT = """\
Answer questions about company policy from the passages only, as one JSON object with keys status, citations, answer, reason.
answered: citations lists the ids of the sentences that answer (e.g. ["s3"]); answer in one or two sentences with the policy's conditions and figures; reason null.
refused (citations [], answer null): reason "no_authorized_source" if no passage is on the subject, "not_in_policy" if none says this point, "out_of_scope" if not about policy.
escalate (reason "needs_human"): only when a person must decide the asker's own case (a dispute, complaint, discipline, their own health or pay case); answer names the team to contact. A question that describes the asker's situation and asks what the policy says is answered."""

NO_PASSAGES = "(no passages)"


@dataclass(frozen=True)
class PromptPassage:
    """What the prompt shows of a passage; `retrieval.retriever.Passage` fits this shape."""

    citation_id: str
    title: str
    section_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Sentence:
    ref: str  # "s4": what the model sees and cites
    citation_id: str  # the passage it belongs to
    start: int  # character offsets into the passage text
    end: int
    text: str


# A sentence ends at . ! or ? followed by white space and a capital, digit, quote or bracket; every
# line is its own sentence (list items, table rows, headings). Written here rather than taken from
# spaCy's sentencizer or NLTK: it keeps exact character offsets (the quote must be a slice of the
# passage), splits at line breaks, needs no model data, and is the same at training and serving.
_LINE = re.compile(r"[^\n]+")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9£$€])")
_MIN_SENTENCE_CHARS = 12  # a shorter piece ("4).", "Done!") is joined to its neighbour on the line


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, stripped of surrounding white space."""
    spans: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        cuts = [line.start(), *(m.end() for m in _BOUNDARY.finditer(text, line.start(), line.end())), line.end()]
        pieces: list[tuple[int, int]] = []
        for start, end in pairwise(cuts):
            piece = text[start:end]
            start, end = start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())
            if end <= start:
                continue
            short = end - start < _MIN_SENTENCE_CHARS or (pieces and pieces[-1][1] - pieces[-1][0] < _MIN_SENTENCE_CHARS)
            if pieces and short:
                pieces[-1] = (pieces[-1][0], end)
            else:
                pieces.append((start, end))
        spans += pieces
    return spans


def number_sentences(passages: Sequence[PromptPassage]) -> list[Sentence]:
    """Every sentence of the passages, numbered s1, s2, ... across them in prompt order."""
    out: list[Sentence] = []
    for passage in passages:
        for start, end in sentence_spans(passage.text):
            out.append(Sentence(f"s{len(out) + 1}", passage.citation_id, start, end, passage.text[start:end]))
    return out


def render_passages(passages: Sequence[PromptPassage]) -> str:
    if not passages:
        return NO_PASSAGES
    sentences = number_sentences(passages)
    blocks = []
    for number, passage in enumerate(passages, start=1):
        where = " > ".join((passage.title, *passage.section_path))
        lines = [f"[{s.ref}] {s.text}" for s in sentences if s.citation_id == passage.citation_id]
        blocks.append("\n".join([f"Passage {number}: {where}", *lines]))
    return "\n\n".join(blocks)


def render_user_message(question: str, passages: Sequence[PromptPassage]) -> str:
    return f"Passages:\n{render_passages(passages)}\n\nQuestion: {question.strip()}"


def build_messages(question: str, passages: Sequence[PromptPassage]) -> list[dict[str, str]]:
    """Chat messages for the model (applied with the tokenizer's chat template)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": render_user_message(question, passages)},
    ]
