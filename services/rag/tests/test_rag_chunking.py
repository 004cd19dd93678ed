"""Text extraction (UTF-8, Markdown, PDF via pypdf) and heading/paragraph-aware chunking."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest

from frugal.rag.chunking import DocumentError, chunk_text, extract_text, normalise_content_type

PdfMaker = Callable[[list[str]], bytes]


def words(text: str) -> int:
    return len(text.split())


# --- extraction ----------------------------------------------------------------------------------------


def test_content_types_are_normalised_and_unknown_ones_rejected() -> None:
    assert normalise_content_type("text/markdown; charset=utf-8") == "text/markdown"
    assert normalise_content_type("TEXT/PLAIN") == "text/plain"
    assert normalise_content_type("text/x-markdown") == "text/markdown"
    with pytest.raises(DocumentError, match="not supported"):
        normalise_content_type("application/msword")


def test_utf8_text_is_decoded_and_cleaned() -> None:
    assert extract_text("caf\u00e9\r\nline\x07two".encode(), "text/plain") == "caf\u00e9\nline two"
    assert extract_text(b"\xef\xbb\xbfbom first", "text/plain") == "bom first"


def test_invalid_utf8_and_binary_text_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(DocumentError, match="not valid UTF-8"):
        extract_text(b"ok \xff\xfe broken", "text/plain")
    with pytest.raises(DocumentError, match="NUL"):
        extract_text(b"binary\x00data", "text/markdown")


def test_pdf_text_is_extracted_page_by_page(make_pdf: PdfMaker) -> None:
    pdf = make_pdf(["Wind tunnel results.\nSecond line (page one).", "Page two: boundary layer notes."])
    text = extract_text(pdf, "application/pdf")
    assert "Wind tunnel results." in text and "Second line (page one)." in text
    assert text.index("Second line") < text.index("Page two")
    assert "\n\n" in text  # pages are paragraphs


def test_pdf_page_limit_and_empty_and_malformed_pdfs(make_pdf: PdfMaker) -> None:
    with pytest.raises(DocumentError, match="3 pages; the limit is 2"):
        extract_text(make_pdf(["a", "b", "c"]), "application/pdf", max_pdf_pages=2)
    with pytest.raises(DocumentError, match="no text could be extracted"):
        extract_text(make_pdf([""]), "application/pdf")
    with pytest.raises(DocumentError, match="not a PDF"):
        extract_text(b"hello, not a pdf", "application/pdf")
    with pytest.raises(DocumentError, match="could not be parsed|no text"):
        extract_text(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "application/pdf")


def test_encrypted_pdf_is_rejected(make_pdf: PdfMaker) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(make_pdf(["secret text"]))).pages:
        writer.add_page(page)
    writer.encrypt(user_password="pw", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(DocumentError, match="encrypted"):
        extract_text(buf.getvalue(), "application/pdf")


# --- chunking ------------------------------------------------------------------------------------------

GUIDE = (
    "# Guide\n\nIntro paragraph. It says what the guide is for.\n\n"
    "## Install\n\n" + " ".join(f"Step {i} installs part {i}." for i in range(60)) + "\n\n"
    "```python\n# not a heading\nprint('hi')\n```\n\n"
    "## Usage\n\n" + " ".join(f"Usage note {i} is here." for i in range(30)) + "\n"
)


def test_chunks_respect_headings_and_size() -> None:
    chunks = chunk_text(GUIDE, markdown=True, target_words=50, overlap_words=10)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.word_count <= 50 for c in chunks)
    install = [c for c in chunks if c.heading == "Guide > Install"]
    usage = [c for c in chunks if c.heading == "Guide > Usage"]
    assert len(install) >= 3 and usage
    # The Usage section starts a chunk of its own, at its heading, without overlap from Install.
    first_usage = usage[0]
    assert first_usage.content.startswith("## Usage")
    assert "installs" not in first_usage.content
    # The fenced block stays whole and its '#' line is not a heading.
    code = [c for c in chunks if "```python" in c.content]
    assert len(code) == 1 and "# not a heading\nprint('hi')\n```" in code[0].content
    assert all("not a heading" not in c.heading for c in chunks)


def test_consecutive_chunks_inside_a_section_overlap_by_whole_sentences() -> None:
    chunks = [c for c in chunk_text(GUIDE, markdown=True, target_words=50, overlap_words=10)
              if c.heading == "Guide > Install"]
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        first_sentence = re.match(r"[^.]*\.", nxt.content)
        assert first_sentence is not None
        # The next chunk opens with a sentence the previous one ended with.
        assert first_sentence.group(0).strip() in prev.content
        step_numbers = [int(n) for n in re.findall(r"Step (\d+)", nxt.content)]
        assert step_numbers == sorted(step_numbers)  # order kept


def test_every_sentence_lands_in_some_chunk() -> None:
    chunks = chunk_text(GUIDE, markdown=True, target_words=40, overlap_words=8)
    joined = "\n".join(c.content for c in chunks)
    for i in range(60):
        assert f"Step {i} installs part {i}." in joined
    for i in range(30):
        assert f"Usage note {i} is here." in joined


def test_small_sections_are_merged_not_fragmented() -> None:
    text = "# A\n\none two three.\n\n# B\n\nfour five six.\n\n# C\n\nseven eight nine."
    chunks = chunk_text(text, markdown=True, target_words=100, overlap_words=10)
    assert len(chunks) == 1
    assert chunks[0].heading == "A"


def test_setext_headings_and_plain_text() -> None:
    md = "Title\n=====\n\nBody one.\n\nSub\n---\n\nBody two."
    chunks = chunk_text(md, markdown=True, target_words=100, min_words=0)
    assert [c.heading for c in chunks] == ["Title", "Title > Sub"]
    # In plain text nothing is a heading.
    plain = chunk_text("# not a heading\n\nbody", markdown=False, target_words=100)
    assert len(plain) == 1 and plain[0].heading == ""


def test_oversized_sentences_and_paragraphs_are_split_to_the_limit() -> None:
    text = " ".join(f"w{i}" for i in range(1000))  # one 1000-word "sentence"
    chunks = chunk_text(text, markdown=False, target_words=100, overlap_words=0)
    assert len(chunks) == 10
    assert all(c.word_count <= 100 for c in chunks)
    assert " ".join(c.content for c in chunks).split() == text.split()


def test_chunk_text_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", markdown=False, target_words=2)
    assert chunk_text("   \n\n  ", markdown=True) == []
