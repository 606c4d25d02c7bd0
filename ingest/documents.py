"""Typed values of the ingest stage: document metadata, loaded documents, chunks."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

from retrieval.directory import Region

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


MAX_GROUPS = 32
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DocumentMeta(BaseModel):
    """Front matter (or sidecar) of one policy document. `groups` says who may read it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    title: str = Field(min_length=1)
    version: str
    effective_date: dt.date
    owner: str = Field(min_length=1)
    groups: tuple[str, ...] = Field(min_length=1)
    region: Region = "global"

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                f"id {value!r} must be lowercase letters, digits, '.', '_' or '-' (e.g. leave-uk)"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_shape(cls, value: object) -> str:
        text = str(value).strip()
        try:
            Version(text)
        except InvalidVersion:
            raise ValueError(f"version {value!r} is not a version number (use 3 or 3.1)") from None
        return text

    @field_validator("groups", mode="before")
    @classmethod
    def _groups_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [g.strip() for g in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ValueError("groups must be a list of group names, e.g. [all-staff]")  # noqa: TRY004 - pydantic reports ValueError
        if len(value) > MAX_GROUPS:
            raise ValueError(f"groups lists {len(value)} entries; at most {MAX_GROUPS} are allowed")
        for group in value:
            # never echo a huge value back: a crafted file made a 522 MB group name
            if not isinstance(group, str) or not _GROUP_RE.match(group.strip()):
                shown = repr(group)[:40] + ("…" if len(repr(group)) > 40 else "")
                raise ValueError(f"group {shown} is not a group name (a short word: letters, digits, '-', '_', '.')")
        return tuple(sorted({g.strip() for g in value if g.strip()}))

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)


@dataclass(frozen=True)
class LoadedDocument:
    """A document's normalized text: Markdown-style headings (`#`), `- ` list items, blank-line
    separated paragraphs. Chunk offsets point into `text`."""

    path: str  # relative to the ingested folder
    format: str  # md, txt, html, pdf, docx
    meta: DocumentMeta
    text: str
    content_hash: str  # sha256 of the raw bytes + sidecar + applied default groups
    default_groups_applied: bool = False


@dataclass(frozen=True)
class Chunk:
    """One retrievable unit of a document version, with where it came from."""

    doc_id: str
    version: str
    index: int
    section_path: tuple[str, ...]
    text: str
    start: int  # character offsets into LoadedDocument.text (after PII scrub)
    end: int

    @property
    def citation_id(self) -> str:
        return citation_id(self.doc_id, self.version, self.index)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def citation_id(doc_id: str, version: str, index: int) -> str:
    """Stable citation id: `leave-uk@v3#c7` (document, version, chunk index)."""
    return f"{doc_id}@v{version}#c{index}"


@dataclass
class PiiReport:
    """What the scrubber removed from one document: entity type -> count."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
