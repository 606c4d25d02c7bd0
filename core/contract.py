"""The house answer format: the one definition shared by tuning, answering and eval.

An answer is one of three shapes, told apart by `status`:

    {"status": "answered", "answer": "...", "citations": [{"id": "leave-uk@v3#c8", "quote": "..."}], "reason": null}
    {"status": "refused",  "answer": null,  "citations": [], "reason": "not_in_policy"}
    {"status": "escalate", "answer": "...", "citations": [...], "reason": "needs_human"}

Each shape is its own model, so its JSON schema already forbids an `answered` without citations
or a `refused` with text; `parse_answer` validates the same rules. The model itself writes the
same shapes with sentence ids as citations (the wire format, `core.references`), and the service
turns them into these.

Refusal reasons depend only on what the asking user can see, never on what exists, so a refusal
cannot reveal a restricted document:
- `no_authorized_source`: none of the passages the user may read covers the subject;
- `not_in_policy`: the passages cover the subject but do not state the point asked;
- `out_of_scope`: not a question about company policy.
`needs_human` goes with `escalate`: what needs a person's decision about the asker's own case (a
dispute, a complaint, discipline, their own health or pay case).

Answered vs escalate, the rule users meet most: a question that describes the asker's situation
and asks what the policy says for it ("I work three days a week and started in March; can I carry
over leave?") is `answered`, with the policy's conditions and figures, cited. It becomes
`escalate` only when what is asked needs someone to decide (e.g. "my manager refused my leave and I
think it is unfair"). The gold set tests both sides (`forms: ["situation_first"]` items, answered
and escalated).
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.errors import PolicyRagError

CITATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*@v[A-Za-z0-9._-]+#c[0-9]+$"
MAX_ANSWER_CHARS = 600
MAX_QUOTE_CHARS = 400
MAX_CITATIONS = 4


def shorten(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """`text` cut to at most `limit` characters at a word boundary, ending in "…" when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0] + "…"


class Status(StrEnum):
    answered = "answered"
    refused = "refused"
    escalate = "escalate"


class Reason(StrEnum):
    no_authorized_source = "no_authorized_source"
    not_in_policy = "not_in_policy"
    out_of_scope = "out_of_scope"
    needs_human = "needs_human"


RefusalReason = Literal["no_authorized_source", "not_in_policy", "out_of_scope"]


class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=CITATION_ID_PATTERN, description="citation id of a retrieved passage")
    quote: str = Field(min_length=1, max_length=MAX_QUOTE_CHARS, description="verbatim span of it")


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Answered(_Shape):
    status: Literal["answered"]
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS)
    citations: list[Citation] = Field(min_length=1, max_length=MAX_CITATIONS)
    reason: None = None


class Refused(_Shape):
    status: Literal["refused"]
    answer: None = None
    citations: list[Citation] = Field(default_factory=list, max_length=0)
    reason: RefusalReason


class Escalated(_Shape):
    status: Literal["escalate"]
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS)
    citations: list[Citation] = Field(default_factory=list, max_length=MAX_CITATIONS)
    reason: Literal["needs_human"] = "needs_human"


Answer = Annotated[Answered | Refused | Escalated, Field(discriminator="status")]
_ADAPTER: TypeAdapter[Answered | Refused | Escalated] = TypeAdapter(Answer)
_KEY_ORDER = ("status", "answer", "citations", "reason")


class AnswerFormatError(PolicyRagError):
    """Model output that is not a house-format answer (not JSON, or breaks the schema)."""

    code = "answer_format"
    http_status = 502  # the model (upstream) produced an invalid answer


def refusal(reason: RefusalReason) -> Refused:
    return Refused(status="refused", reason=reason)


@lru_cache(maxsize=1)
def _schema_text() -> str:
    # property order is kept (status, answer, citations, reason): constrained decoding emits keys in
    # schema order, and it must be the order the adapter was trained on (render_answer)
    return json.dumps(_ADAPTER.json_schema())


def answer_json_schema() -> dict[str, Any]:
    """The JSON schema for constrained decoding (`answer.backends.house_grammar`) and for eval."""
    return json.loads(_schema_text())


def parse_answer(text: str) -> Answered | Refused | Escalated:
    """Parse model output; raises AnswerFormatError saying what is wrong."""
    return parse_json_as(_ADAPTER, text)


def validate_answer(data: Any) -> Answered | Refused | Escalated:
    return validate_as(_ADAPTER, data)


def parse_json_as(adapter: TypeAdapter[Any], text: str) -> Any:
    """`text` as JSON validated by `adapter` (a house shape or the wire format); raises
    AnswerFormatError saying what is wrong."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise AnswerFormatError(f"answer is not JSON ({exc.msg} at char {exc.pos}): {stripped[:120]!r}") from exc
    return validate_as(adapter, data)


def validate_as(adapter: TypeAdapter[Any], data: Any) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}" for err in exc.errors()[:4]
        )
        raise AnswerFormatError(f"answer breaks the house format: {problems}") from exc


def render_answer(answer: Answered | Refused | Escalated) -> str:
    """The canonical one-line JSON of an answer: the training target and the logged form."""
    data = answer.model_dump(mode="json")
    return json.dumps({key: data[key] for key in _KEY_ORDER}, ensure_ascii=False)
