"""Structure-aware chunking with exact character offsets.

Our own code rather than llama-index's MarkdownNodeParser + SentenceSplitter: those cannot
promise both things we need at once: every chunk inside one section with its heading path, and
no sentence ever cut (SentenceSplitter falls back to word splits past its token budget, and its
overlap makes offsets ambiguous). Sentence boundaries come from spaCy's rule-based sentencizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ingest.documents import Chunk

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+")


@dataclass(frozen=True)
class _Block:
    kind: str  # heading | para | item
    start: int
    end: int
    level: int = 0
    title: str = ""


def chunk_document(
    doc_id: str, version: str, title: str, text: str, *, max_chars: int = 1000
) -> list[Chunk]:
    """Split `text` into chunks of at most ~max_chars along headings, paragraphs, list items and
    sentences. A single sentence longer than max_chars becomes its own (oversized) chunk.
    Exact duplicate chunks within the document are dropped."""
    chunks: list[Chunk] = []
    seen: set[str] = set()
    stack: list[tuple[int, str]] = []
    pending: list[tuple[int, int]] = []  # units of the chunk being packed

    def section_path() -> tuple[str, ...]:
        names = [name for _, name in stack]
        if names and stack[0][0] == 1 and names[0].casefold() == title.casefold():
            names = names[1:]  # the H1 repeating the title is not a section
        return tuple(names)

    def flush() -> None:
        if not pending:
            return
        start, end = pending[0][0], pending[-1][1]
        body = text[start:end]
        key = " ".join(body.split()).casefold()
        if key not in seen:
            seen.add(key)
            chunks.append(
                Chunk(doc_id, version, len(chunks), section_path(), body, start, end)
            )
        pending.clear()

    for block in _parse_blocks(text):
        if block.kind == "heading":
            flush()
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.title))
            continue
        for unit in _units(text, block, max_chars):
            if pending and unit[1] - pending[0][0] > max_chars:
                flush()
            pending.append(unit)
    flush()
    return chunks


def _parse_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    cur_kind: str | None = None
    cur_start = cur_end = 0
    pos = 0

    def close() -> None:
        nonlocal cur_kind
        if cur_kind is not None:
            blocks.append(_Block(cur_kind, cur_start, cur_end))
        cur_kind = None

    for line in text.splitlines(keepends=True):
        line_start, pos = pos, pos + len(line)
        stripped = line.rstrip("\n")
        content_end = line_start + len(stripped.rstrip())
        if not stripped.strip():
            close()
            continue
        heading = _HEADING.match(stripped)
        if heading:
            close()
            blocks.append(
                _Block("heading", line_start, content_end, len(heading.group(1)), heading.group(2))
            )
            continue
        if _LIST_ITEM.match(stripped):
            close()
            cur_kind, cur_start = "item", line_start + (len(stripped) - len(stripped.lstrip()))
            cur_end = content_end
            continue
        if cur_kind is None:
            cur_kind, cur_start = "para", line_start + (len(stripped) - len(stripped.lstrip()))
        cur_end = content_end  # a wrapped line continues the paragraph or list item
    close()
    return blocks


def _units(text: str, block: _Block, max_chars: int) -> list[tuple[int, int]]:
    if block.end - block.start <= max_chars:
        return [(block.start, block.end)]
    return [
        (block.start + s, block.start + e) for s, e in sentence_spans(text[block.start : block.end])
    ]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in `text` (whitespace between them excluded)."""
    doc = _sentencizer()(text)
    spans = []
    for sent in doc.sents:
        start, end = sent.start_char, sent.end_char
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


@lru_cache(maxsize=1)
def _sentencizer():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.max_length = 5_000_000
    return nlp
