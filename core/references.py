"""Citations by reference: the model cites sentence ids, the service writes the verbatim quotes.

The prompt shows each retrieved passage one sentence per line, each behind a marker (`[s4]`),
numbered across the passages in prompt order. The model answers in the *wire format*:

    {"status": "answered", "citations": ["s4", "s5"], "answer": "...", "reason": null}

and `resolve_wire_answer` turns it into the house answer of `core.contract`, whose citations are
`{id: passage citation id, quote: the cited sentences' text}`: a quote is a slice of the passage,
so it is verbatim by construction. `wire_json_schema(sentences)` is the per-request schema for
constrained decoding: the citation items are an `enum` of the sentence ids shown in this prompt,
so an invalid citation cannot be generated. The API's house format does not change.

Why references: a 135M model copied long quotes character for character about half the time,
and the copy was most of the tokens it generated; an id is two or three tokens.

`citations` comes before `answer` on purpose: the model picks its evidence first and writes the
answer after it, conditioned on what it cited.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from core.contract import (
    MAX_ANSWER_CHARS,
    MAX_CITATIONS,
    MAX_QUOTE_CHARS,
    Answered,
    AnswerFormatError,
    Citation,
    Escalated,
    RefusalReason,
    Refused,
    parse_json_as,
    shorten,
    validate_as,
)
from core.prompt import (
    SYSTEM_PROMPT,
    PromptPassage,
    Sentence,
    number_sentences,
    render_user_message,
)

HouseAnswer = Answered | Refused | Escalated
REF_PATTERN = r"^s[0-9]{1,3}$"
# What a decided escalation's `answer` must be: the service replaces an escalation's text with the
# configured template (answer/pipeline.py `_escalation`), so once the decider has chosen
# `escalate` the model writes this one character instead of ~35 tokens that would be thrown away.
ESCALATION_PLACEHOLDER = "-"
_WIRE_KEY_ORDER = ("status", "citations", "answer", "reason")

# -- the wire format --------------------------------------------------------------------------

SentenceRef = Annotated[str, Field(pattern=REF_PATTERN)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WireAnswered(_Wire):
    status: Literal["answered"]
    citations: list[SentenceRef] = Field(min_length=1, max_length=MAX_CITATIONS)
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS)
    reason: None = None


class WireRefused(_Wire):
    status: Literal["refused"]
    citations: list[SentenceRef] = Field(default_factory=list, max_length=0)
    answer: None = None
    reason: RefusalReason


class WireEscalated(_Wire):
    status: Literal["escalate"]
    citations: list[SentenceRef] = Field(default_factory=list, max_length=MAX_CITATIONS)
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS)
    reason: Literal["needs_human"] = "needs_human"


WireAnswer = Annotated[WireAnswered | WireRefused | WireEscalated, Field(discriminator="status")]
_WIRE: TypeAdapter[WireAnswered | WireRefused | WireEscalated] = TypeAdapter(WireAnswer)


@lru_cache(maxsize=1)
def _wire_schema_text() -> str:
    return json.dumps(_WIRE.json_schema())


def wire_json_schema(sentences: Sequence[Sentence] | None = None, *, status: str | None = None) -> dict[str, Any]:
    """The wire format's JSON schema; given the prompt's sentences, citation items are an enum of
    their ids (the per-request schema for constrained decoding); given a `status`, only that
    status's shape is allowed (the status decider chose it, tuning/status.py), and a decided
    escalation's answer is ESCALATION_PLACEHOLDER (its text is the service's template)."""
    schema = json.loads(_wire_schema_text())
    if status is not None:
        target = schema["discriminator"]["mapping"].get(status)
        if target is None:
            raise ValueError(f"no wire shape for status {status!r}; one of {sorted(schema['discriminator']['mapping'])}")
        schema = {"$defs": schema["$defs"], "$ref": target}
        if status == "escalate":
            shape = schema["$defs"][target.rsplit("/", 1)[-1]]
            shape["properties"]["answer"] = {"type": "string", "const": ESCALATION_PLACEHOLDER}
    if sentences is None:
        return schema
    refs = [s.ref for s in sentences]

    def narrow(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("pattern") == REF_PATTERN:
                return {"type": "string", "enum": refs}
            return {key: narrow(value) for key, value in node.items()}
        if isinstance(node, list):
            return [narrow(value) for value in node]
        return node

    return narrow(schema)  # json.loads made a fresh copy: nothing shared is changed


def parse_wire_answer(text: str, *, cuts: list[str] | None = None) -> WireAnswered | WireRefused | WireEscalated:
    """The model's output as a wire answer; raises AnswerFormatError saying what is wrong. Given
    a `cuts` list, an answer text over MAX_ANSWER_CHARS is cut at a word boundary instead of
    refused, and a line saying so is appended to it: the decoding grammar does not bound the
    text's length (answer/grammar.py says why). That includes an output that stopped at
    max_tokens inside its answer text (a model repeating itself), which is closed there."""
    try:
        return parse_json_as(_WIRE, text)
    except AnswerFormatError:  # parsed again only on this rare path; a valid answer is parsed once
        if cuts is None:
            raise
        try:
            data, stopped = json.loads(text.strip()), False
        except json.JSONDecodeError:
            data, stopped = _stopped_in_answer(text.strip()), True
        if not (isinstance(data, dict) and isinstance(data.get("answer"), str)
                and (stopped or len(data["answer"]) > MAX_ANSWER_CHARS)):
            raise
    answer = data["answer"]
    if stopped:  # the last word may be partial: end at the last whole one
        cut = shorten(answer) if len(answer) > MAX_ANSWER_CHARS else answer.rstrip().rsplit(" ", 1)[0] + "…"
        cuts.append(f"output stopped at the token limit inside its answer text ({len(answer)} characters); "
                    f"closed at a word boundary")
    else:
        cut = shorten(answer)
        cuts.append(f"answer text cut from {len(answer)} to at most {MAX_ANSWER_CHARS} characters")
    return validate_as(_WIRE, {**data, "answer": cut})


_ANSWER_KEY = ', "answer": "'  # what precedes the answer text in the wire format's key order


def _stopped_in_answer(text: str) -> dict[str, Any] | None:
    """The fields of an output that ended inside its answer string (`{"status": ..., "citations":
    [...], "answer": "...` with no closing quote), the text so far as its answer, or None."""
    at = text.find(_ANSWER_KEY)
    if at < 0:
        return None
    try:
        head = json.loads(text[:at] + "}")
    except json.JSONDecodeError:
        return None
    if not isinstance(head, dict):
        return None
    partial = text[at + len(_ANSWER_KEY):]
    for trim in range(min(6, len(partial)) + 1):  # a cut escape sequence ("\", "\u20") is dropped
        try:
            answer = json.loads('"' + partial[: len(partial) - trim] + '"')
        except json.JSONDecodeError:
            continue
        return {**head, "answer": answer} if answer.strip() else None
    return None


def render_wire(answer: WireAnswered | WireRefused | WireEscalated) -> str:
    """The canonical one-line JSON of a wire answer: the training target."""
    data = answer.model_dump(mode="json")
    return json.dumps({key: data[key] for key in _WIRE_KEY_ORDER}, ensure_ascii=False)


# -- wire <-> house ---------------------------------------------------------------------------


def resolve_wire_answer(
    wire: WireAnswered | WireRefused | WireEscalated, sentences: Sequence[Sentence],
    passages: Sequence[PromptPassage],
) -> tuple[HouseAnswer, list[str]]:
    """The house answer for a wire answer, and one line per cited id that is not in the prompt
    (only possible without constrained decoding). Adjacent sentences of one passage become one
    quote; an `answered` whose ids are all unknown becomes a refusal (`not_in_policy`)."""
    by_ref = {s.ref: s for s in sentences}
    texts = {p.citation_id: p.text for p in passages}
    problems = [f"citation {ref!r} is not a sentence of the retrieved passages" for ref in wire.citations if ref not in by_ref]
    cited = sorted({by_ref[ref] for ref in wire.citations if ref in by_ref}, key=lambda s: int(s.ref[1:]))
    groups: list[list[Sentence]] = []
    for sentence in cited:
        last = groups[-1][-1] if groups else None
        if last is not None and last.citation_id == sentence.citation_id and int(sentence.ref[1:]) == int(last.ref[1:]) + 1:
            groups[-1].append(sentence)
        else:
            groups.append([sentence])
    citations = [Citation(id=g[0].citation_id, quote=fit_quote(texts[g[0].citation_id][g[0].start:g[-1].end]))
                 for g in groups[:MAX_CITATIONS]]
    if isinstance(wire, WireRefused):
        return Refused(status="refused", reason=wire.reason), problems
    if isinstance(wire, WireEscalated):
        return Escalated(status="escalate", answer=wire.answer, citations=citations), problems
    if not citations:
        return Refused(status="refused", reason="not_in_policy"), problems
    return Answered(status="answered", answer=wire.answer, citations=citations), problems


def fit_quote(quote: str) -> str:
    """A span of a passage cut at a word boundary to fit MAX_QUOTE_CHARS (still verbatim)."""
    if len(quote) <= MAX_QUOTE_CHARS:
        return quote
    cut = quote[:MAX_QUOTE_CHARS]
    return cut[:cut.rfind(" ")].rstrip() if " " in cut else cut


class ReferenceError(ValueError):
    """A house citation that no sentence of its passage covers (a bad training target)."""


def wire_from_house(answer: HouseAnswer, passages: Sequence[PromptPassage]) -> WireAnswered | WireRefused | WireEscalated:
    """The wire answer that resolves to `answer` in this context: each quote becomes the ids of
    the sentences it overlaps (the training target). Raises ReferenceError for a quote that is
    not in its passage."""
    sentences = number_sentences(passages)
    texts = {p.citation_id: p.text for p in passages}
    refs: list[str] = []
    for citation in answer.citations:
        text = texts.get(citation.id)
        at = text.find(citation.quote) if text is not None else -1
        if at < 0:
            raise ReferenceError(f"quote {citation.quote[:60]!r} is not in passage {citation.id!r}")
        end = at + len(citation.quote)
        refs += [s.ref for s in sentences if s.citation_id == citation.id and s.start < end and s.end > at
                 and s.ref not in refs]
    refs = refs[:MAX_CITATIONS]
    if isinstance(answer, Refused):
        return WireRefused(status="refused", reason=answer.reason)
    if isinstance(answer, Escalated):
        return WireEscalated(status="escalate", citations=refs, answer=answer.answer)
    return WireAnswered(status="answered", citations=refs, answer=answer.answer)


def prompt_fingerprint() -> str:
    """Identifies the prompt and the wire format an adapter was trained with (in its manifest):
    an adapter trained on another one is not served (`answer.pipeline`) and `up` retrains."""
    sample = render_user_message("Q?", [PromptPassage("d@v1#c0", "T", ("S",), "X one. Y two.\n- Z")])
    key = "\0".join((SYSTEM_PROMPT, sample, _wire_schema_text(), ",".join(_WIRE_KEY_ORDER)))
    return hashlib.sha256(key.encode()).hexdigest()[:16]
