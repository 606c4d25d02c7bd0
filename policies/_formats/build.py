#!/usr/bin/env python3
"""Build the non-Markdown policy documents from their Markdown sources.

Each source in this folder is a Markdown file with YAML front matter (the same
format as the policies in ``policies/``). For every entry in ``FORMATS`` the
script writes ``policies/<id>.<ext>`` and a sidecar
``policies/<id>.<ext>.meta.yaml`` holding the front-matter keys.

Run from the repository root:

    .venv/bin/python policies/_formats/build.py

The output is deterministic: fixed creation dates and zip timestamps, so that
re-running the script produces byte-identical files.
"""

from __future__ import annotations

import html
import io
import re
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE.parent

# source id -> output format
FORMATS = {
    "travel": "html",
    "anti-bribery": "pdf",
    "remote-work": "docx",
}

META_KEYS = ["id", "title", "version", "effective_date", "owner", "groups", "region"]
FIXED_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)
FIXED_ZIP_TIME = (2026, 1, 1, 0, 0, 0)
AUTHOR = "Northwind Meridian Ltd"


# --------------------------------------------------------------------------
# Minimal Markdown parsing (headings, paragraphs, bullet and numbered lists)
# --------------------------------------------------------------------------

@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "ul" | "ol"
    text: str = ""
    items: list[str] = field(default_factory=list)


HEADING_RE = re.compile(r"^(#{1,3})\s+(.*)$")
BULLET_RE = re.compile(r"^[-*]\s+(.*)$")
NUMBER_RE = re.compile(r"^(\d+)\.\s+(.*)$")


def split_front_matter(text: str) -> tuple[str, str]:
    if not text.startswith("---\n"):
        raise ValueError("missing front matter")
    end = text.index("\n---\n", 4)
    return text[4:end + 1], text[end + 5:]


def parse_blocks(body: str) -> list[Block]:
    blocks: list[Block] = []
    para: list[str] = []

    def flush_para() -> None:
        if para:
            blocks.append(Block("p", " ".join(s.strip() for s in para)))
            para.clear()

    for raw in body.splitlines():
        line = raw.rstrip()
        if not line.strip():
            flush_para()
            continue
        m = HEADING_RE.match(line)
        if m:
            flush_para()
            blocks.append(Block("h%d" % len(m.group(1)), m.group(2).strip()))
            continue
        m = BULLET_RE.match(line)
        if m:
            flush_para()
            if not blocks or blocks[-1].kind != "ul":
                blocks.append(Block("ul"))
            blocks[-1].items.append(m.group(1).strip())
            continue
        m = NUMBER_RE.match(line)
        if m:
            flush_para()
            if not blocks or blocks[-1].kind != "ol":
                blocks.append(Block("ol"))
            blocks[-1].items.append(m.group(2).strip())
            continue
        if line.lstrip().startswith("|"):
            raise ValueError("tables are not supported in format sources: %r" % line)
        para.append(line)
    flush_para()
    return blocks


def load_source(path: Path) -> tuple[dict, str, list[Block]]:
    text = path.read_text(encoding="utf-8")
    fm_text, body = split_front_matter(text)
    meta = yaml.safe_load(fm_text)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError("%s: missing front matter keys %s" % (path.name, missing))
    return meta, fm_text, parse_blocks(body)


def sidecar_text(meta: dict) -> str:
    ordered = {key: meta[key] for key in META_KEYS}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=1000)


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

def build_html(meta: dict, blocks: list[Block]) -> bytes:
    def esc(value: str) -> str:
        return html.escape(value, quote=False)

    def attr(value: str) -> str:
        return html.escape(value, quote=True)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>%s</title>" % esc(meta["title"]),
        '<meta name="document-id" content="%s">' % attr(meta["id"]),
        '<meta name="version" content="%s">' % attr(str(meta["version"])),
        '<meta name="effective-date" content="%s">' % attr(meta["effective_date"].isoformat()),
        '<meta name="owner" content="%s">' % attr(meta["owner"]),
        "</head>",
        "<body>",
        "<article>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3", "p"):
            out.append("<%s>%s</%s>" % (b.kind, esc(b.text), b.kind))
        else:
            out.append("<%s>" % b.kind)
            out.extend("<li>%s</li>" % esc(item) for item in b.items)
            out.append("</%s>" % b.kind)
    out += ["</article>", "</body>", "</html>", ""]
    return "\n".join(out).encode("utf-8")


# --------------------------------------------------------------------------
# PDF (fpdf2, core fonts: latin-1 only)
# --------------------------------------------------------------------------

def build_pdf(meta: dict, blocks: list[Block]) -> bytes:
    from fpdf import FPDF

    for b in blocks:
        for t in [b.text, *b.items]:
            t.encode("latin-1")  # raises if a character is not supported

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(meta["title"])
    pdf.set_author(AUTHOR)
    pdf.set_subject("%s (version %s, effective %s)" % (
        meta["id"], meta["version"], meta["effective_date"].isoformat()))
    pdf.set_creator("policies/_formats/build.py")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()

    width = pdf.w - pdf.l_margin - pdf.r_margin
    sizes = {"h1": 16, "h2": 13, "h3": 11}
    for b in blocks:
        if b.kind in sizes:
            # keep a heading together with the start of its section
            if pdf.get_y() > pdf.h - pdf.b_margin - 30:
                pdf.add_page()
            pdf.ln(4 if b.kind != "h1" else 0)
            pdf.set_font("Helvetica", "B", sizes[b.kind])
            pdf.multi_cell(width, sizes[b.kind] * 0.5, b.text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif b.kind == "p":
            pdf.set_font("Helvetica", "", 10)
            pdf.multi_cell(width, 5, b.text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        else:
            pdf.set_font("Helvetica", "", 10)
            for i, item in enumerate(b.items, start=1):
                marker = "-" if b.kind == "ul" else "%d." % i
                pdf.set_x(pdf.l_margin + 4)
                pdf.cell(6, 5, marker)
                pdf.multi_cell(width - 10, 5, item, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    return bytes(pdf.output())


# --------------------------------------------------------------------------
# DOCX (python-docx)
# --------------------------------------------------------------------------

def normalise_zip(data: bytes) -> bytes:
    """Rewrite a zip archive with fixed timestamps so the bytes are stable."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            new = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            new.compress_type = zipfile.ZIP_DEFLATED
            new.external_attr = 0o644 << 16
            dst.writestr(new, src.read(info.filename))
    return buf.getvalue()


def build_docx(meta: dict, blocks: list[Block]) -> bytes:
    from docx import Document

    doc = Document()
    cp = doc.core_properties
    cp.title = meta["title"]
    cp.author = AUTHOR
    cp.last_modified_by = AUTHOR
    cp.subject = "%s (version %s, effective %s)" % (
        meta["id"], meta["version"], meta["effective_date"].isoformat())
    cp.keywords = meta["id"]
    cp.revision = 1
    cp.created = FIXED_DATE.replace(tzinfo=None)
    cp.modified = FIXED_DATE.replace(tzinfo=None)
    cp.last_printed = FIXED_DATE.replace(tzinfo=None)

    levels = {"h1": 1, "h2": 2, "h3": 3}
    for b in blocks:
        if b.kind in levels:
            doc.add_paragraph(b.text, style="Heading %d" % levels[b.kind])
        elif b.kind == "p":
            doc.add_paragraph(b.text)
        elif b.kind == "ul":
            for item in b.items:
                doc.add_paragraph(item, style="List Bullet")
        else:
            # literal numbers keep the list numbering stable in extracted text
            for i, item in enumerate(b.items, start=1):
                doc.add_paragraph("%d. %s" % (i, item), style="List Paragraph")

    buf = io.BytesIO()
    doc.save(buf)
    return normalise_zip(buf.getvalue())


BUILDERS = {"html": build_html, "pdf": build_pdf, "docx": build_docx}


def main() -> int:
    for doc_id, fmt in sorted(FORMATS.items()):
        src = HERE / ("%s.md" % doc_id)
        meta, _, blocks = load_source(src)
        if meta["id"] != doc_id:
            raise ValueError("%s: id %r does not match file name" % (src.name, meta["id"]))
        out = OUT_DIR / ("%s.%s" % (doc_id, fmt))
        out.write_bytes(BUILDERS[fmt](meta, blocks))
        (OUT_DIR / ("%s.%s.meta.yaml" % (doc_id, fmt))).write_text(sidecar_text(meta), encoding="utf-8")
        print("wrote %s (+ .meta.yaml)" % out.relative_to(OUT_DIR.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
