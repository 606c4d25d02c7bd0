"""Find policy files and turn each into a LoadedDocument (normalized text + access metadata).

Text comes out of llama-index readers (FlatReader, PDFReader, DocxReader); HTML goes through
BeautifulSoup directly because llama-index's HTMLTagReader flattens headings, and the heading
structure is what citations name ("Leave policy v3 › 4.2 Carry-over"). Markdown and text files
carry their metadata as YAML front matter; every format may instead use a sidecar file
`<name>.meta.yaml` next to it (the only option for HTML, PDF and DOCX).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import frontmatter
import yaml
from pydantic import ValidationError

from core.errors import DocumentRejected
from ingest.documents import DocumentMeta, LoadedDocument

FORMATS = {
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
SIDECAR_SUFFIX = ".meta.yaml"
_IGNORED_NAMES = {"directory.yaml", "pii-allowlist.txt"}
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+([A-Z][^\n]{0,90})$")
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u25aa\u2013]|\d+[.)])\s+")


def discover_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Document candidates under `root` (sorted) and files skipped as not-a-document.

    Hidden files and folders, and folders starting with `_` (sources, tooling) are not looked at.
    """
    candidates: list[Path] = []
    skipped: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts) or not path.is_file():
            continue
        if path.name.endswith(SIDECAR_SUFFIX) or path.name in _IGNORED_NAMES:
            continue
        if path.suffix.lower() in FORMATS:
            candidates.append(path)
        else:
            skipped.append(path)
    return candidates, skipped


def link_outside(path: Path, root: Path) -> Path | None:
    """Where `path` really is when a symbolic link (the file or a folder on the way) takes it
    outside `root`, else None. Such a file is rejected: a link like `handbook.txt ->
    ../outside/.env` would otherwise make a secret searchable text."""
    real, inside = path.resolve(), root.resolve()
    return None if real == inside or inside in real.parents else real


def fingerprint(path: Path) -> str:
    """sha256 of the file's bytes and its sidecar's: the change-detection key."""
    digest = hashlib.sha256(path.read_bytes())
    sidecar = _sidecar_path(path)
    if sidecar.exists():
        digest.update(b"\0sidecar\0" + sidecar.read_bytes())
    return digest.hexdigest()


def load_document(
    path: Path,
    root: Path,
    *,
    max_bytes: int,
    default_groups: Iterable[str] | None = None,
    known_groups: Iterable[str] | None = None,
) -> LoadedDocument:
    """Read, validate and normalize one file. Raises DocumentRejected with the reason."""
    rel = path.relative_to(root).as_posix()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DocumentRejected(rel, "unsupported", f"unsupported file type {path.suffix!r}")
    size = path.stat().st_size
    if size == 0:
        raise DocumentRejected(rel, "empty", "the file is empty (0 bytes); remove it or add text")
    if size > max_bytes:
        raise DocumentRejected(
            rel,
            "too_large",
            f"the file is {size / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB; split "
            "it or raise POLICYRAG_MAX_FILE_BYTES",
        )
    raw = path.read_bytes()
    front: dict = {}
    if fmt in ("md", "txt"):
        text = _decode_text(rel, raw)
        front, body = _split_front_matter(rel, text)
    elif fmt == "html":
        body = _html_to_text(rel, _decode_text(rel, raw))
    elif fmt == "pdf":
        body = _structure_plain_text(_pdf_text(rel, path, raw))
    else:
        body = _structure_plain_text(_docx_text(rel, path, raw))

    sidecar = _sidecar_path(path)
    if sidecar.exists():
        # the sidecar is the one source of access: a file cannot set its own groups or region
        # against it (a front matter saying [all-staff] under a sidecar saying [hr] is rejected)
        side = _read_sidecar(rel, sidecar)
        clash = [k for k in ("groups", "region") if k in side and k in front and front[k] != side[k]]
        if clash:
            raise DocumentRejected(
                rel, "access_conflict",
                f"its front matter sets {' and '.join(clash)} differently from its sidecar {sidecar.name}; "
                "access comes from the sidecar: remove them from the front matter")
        front = {**front, **side}
    meta = _build_meta(rel, path, front, body, default_groups)
    if known_groups is not None:
        unknown = sorted(set(meta.groups) - set(known_groups))
        if unknown:
            raise DocumentRejected(
                rel,
                "unknown_group",
                f"unknown group(s) {', '.join(unknown)} in `groups`; known groups: "
                f"{', '.join(sorted(known_groups))} (fix the typo or add the group to the directory)",
                access=(meta.id, tuple(meta.groups), meta.region),
            )
    body = body.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if not body.strip():
        raise DocumentRejected(rel, "no_text", "no text to index after the metadata",
                               access=(meta.id, tuple(meta.groups), meta.region))
    applied = not front.get("groups")
    content_hash = fingerprint(path)
    if applied:  # other --default-groups later must re-index the document with the new groups
        content_hash = hashlib.sha256(
            f"{content_hash}\0default-groups\0{','.join(meta.groups)}".encode()
        ).hexdigest()
    return LoadedDocument(
        path=rel,
        format=fmt,
        meta=meta,
        text=body,
        content_hash=content_hash,
        default_groups_applied=applied,
    )


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _decode_text(rel: str, raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise DocumentRejected(
            rel, "binary", "binary content (NUL bytes) in a text file; is this really text?"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentRejected(
            rel,
            "encoding",
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); re-save the "
            "file as UTF-8",
        ) from None


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: metadata never needs them, and nested aliases let a
    501-byte file expand into hundreds of megabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in document metadata",
                                              event.start_mark)
        return super().compose_node(parent, index)


class _MetadataHandler(frontmatter.YAMLHandler):
    def load(self, fm: str, **kwargs: object) -> object:
        return yaml.load(fm, Loader=_NoAliasLoader)  # a SafeLoader without aliases


def _split_front_matter(rel: str, text: str) -> tuple[dict, str]:
    if not text.lstrip("\ufeff").startswith("---"):
        return {}, text
    try:
        post = frontmatter.loads(text, handler=_MetadataHandler())
    except yaml.YAMLError as exc:
        raise DocumentRejected(
            rel, "front_matter", f"malformed front matter ({_one_line(exc)}); fix the YAML"
        ) from None
    if not isinstance(post.metadata, dict):
        raise DocumentRejected(rel, "front_matter", "front matter is not a YAML mapping")
    return dict(post.metadata), post.content


def _read_sidecar(rel: str, sidecar: Path) -> dict:
    try:
        data = yaml.load(sidecar.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # a SafeLoader without aliases
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DocumentRejected(
            rel, "front_matter", f"malformed sidecar {sidecar.name} ({_one_line(exc)})"
        ) from None
    if not isinstance(data, dict):
        raise DocumentRejected(rel, "front_matter", f"sidecar {sidecar.name} is not a mapping")
    return data


def _build_meta(
    rel: str, path: Path, front: dict, body: str, default_groups: Iterable[str] | None
) -> DocumentMeta:
    defaults = list(default_groups or [])
    if not front and not defaults:
        raise DocumentRejected(
            rel,
            "no_metadata",
            "no front matter or sidecar metadata; add id, title, version, effective_date, owner, "
            "groups and region (see policies/), or pass --default-groups to ingest it for those "
            "groups",
        )
    values = dict(front)
    if not values.get("groups"):
        if not defaults:
            raise DocumentRejected(
                rel,
                "no_groups",
                "no `groups` in the metadata: a document without groups is not public; add "
                "`groups: [...]` or pass --default-groups G1,G2",
            )
        values["groups"] = defaults
    if defaults:  # only documents ingested under --default-groups get derived fields
        values.setdefault("id", _slug(path.stem))
        values.setdefault("title", _first_heading(body) or path.stem)
        values.setdefault("version", "1")
        values.setdefault(
            "effective_date", dt.date.fromtimestamp(path.stat().st_mtime).isoformat()
        )
        values.setdefault("owner", "unassigned")
    try:
        return DocumentMeta.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'metadata'}: {err['msg']}"
            for err in exc.errors()
        )
        raise DocumentRejected(rel, "front_matter", f"invalid metadata: {problems}") from None


def _slug(stem: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "document"


def _first_heading(body: str) -> str | None:
    for line in body.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _html_to_text(rel: str, html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head", "nav", "footer"]):
        tag.decompose()
    blocks: list[str] = []
    for el in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "td", "pre"]):
        if el.find_parent(["li", "p", "td", "pre"]) is not None:
            continue  # nested inside a block already emitted
        text = " ".join(el.get_text(" ").split())
        if not text:
            continue
        if el.name[0] == "h":
            blocks.append("#" * int(el.name[1]) + " " + text)
        elif el.name == "li":
            blocks.append("- " + text)
        else:
            blocks.append(text)
    if not blocks:
        raise DocumentRejected(rel, "no_text", "the HTML has no readable text")
    return _join_blocks(blocks)


def _pdf_text(rel: str, path: Path, raw: bytes) -> str:
    if not raw.startswith(b"%PDF-"):
        raise DocumentRejected(rel, "corrupt", "not a PDF (no %PDF- header); is the file damaged?")
    from llama_index.readers.file import PDFReader
    from pypdf import PdfReader

    try:
        if PdfReader(io.BytesIO(raw)).is_encrypted:
            raise DocumentRejected(rel, "encrypted", "the PDF is encrypted; export it unprotected")
        pages = PDFReader(return_full_document=False).load_data(path)
    except DocumentRejected:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        raise DocumentRejected(
            rel, "corrupt", f"corrupt or unreadable PDF ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    text = "\n\n".join(page.text for page in pages)
    if not text.strip():
        raise DocumentRejected(
            rel, "no_text", "the PDF has no extractable text (a scan?); run OCR first"
        )
    return text


# A DOCX is a zip: its compressed size says little. A 216 KB file expanded to 74 MB of XML and a
# 1.27 GB peak. The sizes the archive declares are checked before anything is inflated.
DOCX_MAX_UNCOMPRESSED = 30 * 1024 * 1024
DOCX_MAX_RATIO = 100


def _docx_text(rel: str, path: Path, raw: bytes) -> str:
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise DocumentRejected(rel, "corrupt", "not a DOCX (not a zip archive); is it damaged?")
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        inflated = sum(info.file_size for info in archive.infolist())
    if inflated > DOCX_MAX_UNCOMPRESSED or inflated > DOCX_MAX_RATIO * max(len(raw), 1):
        raise DocumentRejected(
            rel, "too_large",
            f"the DOCX expands to {inflated / 1e6:.1f} MB ({inflated / max(len(raw), 1):.0f}x its {len(raw) / 1e3:.0f} KB); "
            f"the limits are {DOCX_MAX_UNCOMPRESSED // (1024 * 1024)} MB and {DOCX_MAX_RATIO}x: split it or remove embedded content")
    from llama_index.readers.file import DocxReader

    try:
        docs = DocxReader().load_data(path)
    except Exception as exc:
        raise DocumentRejected(
            rel, "corrupt", f"corrupt or unreadable DOCX ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return "\n\n".join(d.text for d in docs)


def _structure_plain_text(text: str) -> str:
    """Recover headings, list items and paragraphs from extracted PDF/DOCX text.

    Numbered short lines without a final full stop ("4.2 Carry-over limits") become headings
    of depth = number of components; bullet lines become list items; wrapped lines are joined.
    """
    blocks: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(" ".join(para))
            para.clear()

    for line in text.replace("\r", "\n").split("\n"):
        stripped = line.strip()
        if not stripped:
            flush()
            continue
        heading = _NUMBERED_HEADING.match(stripped)
        if heading and not stripped.endswith((".", ",", ";", ":")) and len(stripped) <= 90:
            flush()
            depth = heading.group(1).count(".") + 2  # "4" -> ##, "4.2" -> ###
            blocks.append("#" * min(depth, 6) + " " + stripped)
        elif _BULLET.match(stripped):
            flush()
            blocks.append("- " + _BULLET.sub("", stripped, count=1))
        elif blocks and blocks[-1].startswith("- ") and not para and not _starts_sentence(stripped):
            blocks[-1] += " " + stripped  # wrapped list item
        else:
            if not blocks and not para and len(stripped) <= 90 and not stripped.endswith("."):
                blocks.append("# " + stripped)  # a leading title line
                continue
            para.append(stripped)
    flush()
    return _join_blocks(blocks)


def _starts_sentence(line: str) -> bool:
    return line[:1].isupper()


def _join_blocks(blocks: list[str]) -> str:
    return "\n\n".join(blocks)
