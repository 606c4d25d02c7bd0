import string

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import chunk_document

WORD = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=9)


@st.composite
def sentences(draw):
    words = draw(st.lists(WORD, min_size=3, max_size=30))
    # end on a plain word: a random final "vs." or "etc." is an abbreviation, not a sentence end
    last = draw(st.sampled_from(["policy", "leave", "approval", "days"]))
    return words[0].capitalize() + " " + " ".join(words[1:]) + f" {last}" + draw(st.sampled_from([".", "!", "?"]))


@st.composite
def documents(draw):
    """Markdown with headings, paragraphs and list items; returns (text, sentences)."""
    parts, all_sentences = [], []
    for s_idx in range(draw(st.integers(1, 4))):
        parts.append(f"## {s_idx + 1}. Section {s_idx + 1}")
        for _ in range(draw(st.integers(1, 4))):
            sents = draw(st.lists(sentences(), min_size=1, max_size=8))
            all_sentences += sents
            if draw(st.booleans()):
                parts.append(" ".join(sents))
            else:
                parts.append("\n".join(f"- {s}" for s in sents))
    return "# Title\n\n" + "\n\n".join(parts) + "\n", all_sentences


@settings(max_examples=60, deadline=None)
@given(documents(), st.integers(200, 800))
def test_chunks_never_split_a_sentence_and_offsets_are_exact(doc, max_chars):
    text, sents = doc
    chunks = chunk_document("d", "1", "Title", text, max_chars=max_chars)
    assert chunks
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        # over the cap only when the chunk is one unsplittable sentence
        if len(chunk.text) > max_chars:
            assert chunk.text.strip().lstrip("- ") in sents
    for sentence in sents:
        assert any(sentence in c.text for c in chunks), sentence


def test_chunks_carry_their_section_path():
    text = (
        "# Leave Policy\n\n## 4. Carry-over\n\nIntro to carry-over.\n\n"
        "### 4.2 Carry-over limits\n\nYou may carry over 8 days.\n\n## 5. Sickness\n\nCall in.\n"
    )
    chunks = chunk_document("leave", "3", "Leave Policy", text)
    by_text = {c.text: c for c in chunks}
    assert by_text["Intro to carry-over."].section_path == ("4. Carry-over",)
    assert by_text["You may carry over 8 days."].section_path == ("4. Carry-over", "4.2 Carry-over limits")
    assert by_text["Call in."].section_path == ("5. Sickness",)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[1].citation_id == "leave@v3#c1"


def test_a_chunk_never_spans_two_sections():
    text = "# T\n\n## A\n\nShort a.\n\n## B\n\nShort b.\n"
    chunks = chunk_document("t", "1", "T", text, max_chars=1000)
    assert [c.text for c in chunks] == ["Short a.", "Short b."]


def test_duplicate_paragraphs_in_one_document_are_stored_once():
    text = "# T\n\n## A\n\nContact HR for help.\n\n## B\n\nContact HR for help.\n"
    assert len(chunk_document("t", "1", "T", text)) == 1
