"""Document text extraction and heading/paragraph-aware chunking with overlap.

A document becomes sections (Markdown ATX or setext headings; code fences are never split or read as
headings), sections become paragraphs, paragraphs longer than a chunk become sentences, and
sentences longer than a chunk become word windows. Units are packed greedily up to `target_words`.
A chunk starts at a heading unless the chunk being built is still small (under `min_words`), so
short sections are merged instead of becoming fragments. Consecutive chunks inside one section
overlap by whole trailing sentences (up to `overlap_words`); chunks do not overlap across headings.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

CHUNKER_VERSION = "md-para-v1"

CONTENT_TYPES = ("text/plain", "text/markdown", "application/pdf")

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+(?=\S)")
_WORD = re.compile(r"\S+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class DocumentError(ValueError):
    """The document cannot be read or chunked; the message is shown to the caller."""


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    content: str
    heading: str  # heading path where the chunk starts, "A > B"; "" before any heading
    word_count: int


@dataclass(slots=True)
class _Block:
    text: str
    heading: tuple[str, ...]
    starts_section: bool
    code: bool = False


@dataclass(slots=True)
class _Unit:
    text: str
    words: int
    heading: tuple[str, ...]
    starts_section: bool
    sentence_parts: list[str] = field(default_factory=list)
    block: int = -1  # index of the block (paragraph) the unit comes from


def normalise_content_type(value: str) -> str:
    base = value.split(";", 1)[0].strip().lower()
    if base in ("text/x-markdown", "text/md"):
        base = "text/markdown"
    if base not in CONTENT_TYPES:
        raise DocumentError(f"content_type {value!r} is not supported: use one of {', '.join(CONTENT_TYPES)}")
    return base


def extract_text(content: bytes, content_type: str, *, max_pdf_pages: int = 500) -> str:
    """Bytes to text. Raises DocumentError with a message fit for the caller."""
    if content_type == "application/pdf":
        return _pdf_text(content, max_pdf_pages)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"content is not valid UTF-8 (byte {err.start}: {content[err.start:err.start + 1]!r}); "
            "send text as UTF-8"
        ) from None
    if "\x00" in text:
        raise DocumentError("text content contains NUL bytes: is it a binary file sent as text?")
    return _clean(text)


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(" ", text)


def _pdf_text(content: bytes, max_pages: int) -> str:
    if not content.startswith(b"%PDF-"):
        raise DocumentError("content is not a PDF (missing %PDF- header)")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise DocumentError("PDF is encrypted: send an unencrypted copy")
        pages = reader.pages
        if len(pages) > max_pages:
            raise DocumentError(f"PDF has {len(pages)} pages; the limit is {max_pages}")
        texts = [page.extract_text() or "" for page in pages]
    except DocumentError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise DocumentError(f"PDF could not be parsed: {err}") from None
    # Pages become paragraphs; inside a page, pypdf separates lines with newlines.
    text = "\n\n".join(_clean(t).strip() for t in texts if t.strip())
    if not text:
        raise DocumentError("no text could be extracted from the PDF (scanned images need OCR first)")
    return text


def _blocks(text: str, markdown: bool) -> list[_Block]:
    blocks: list[_Block] = []
    heading: list[str] = []
    levels: list[int] = []
    para: list[str] = []
    pending_section = False
    fence: str | None = None
    code: list[str] = []

    def flush() -> None:
        nonlocal pending_section
        if para:
            blocks.append(_Block("\n".join(para).strip(), tuple(heading), pending_section))
            pending_section = False
            para.clear()

    def set_heading(level: int, title: str) -> None:
        nonlocal pending_section
        while levels and levels[-1] >= level:
            levels.pop()
            heading.pop()
        levels.append(level)
        heading.append(title)
        line = "#" * level + " " + title
        blocks.append(_Block(line, tuple(heading), True))
        pending_section = False

    for raw in text.split("\n"):
        line = raw.rstrip()
        if markdown and fence is not None:
            code.append(raw)
            if line.strip().startswith(fence):
                blocks.append(_Block("\n".join(code), tuple(heading), pending_section, code=True))
                pending_section = False
                code, fence = [], None
            continue
        if markdown:
            m = _FENCE.match(line)
            if m:
                flush()
                fence = m.group(1)[0] * 3
                code = [raw]
                continue
            m = _ATX.match(line)
            if m and (m.group(2) or "").strip():
                flush()
                set_heading(len(m.group(1)), m.group(2).strip())
                continue
            m = _SETEXT.match(line)
            if m and len(para) == 1 and para[0].strip():
                title = para.pop().strip()
                set_heading(1 if m.group(1)[0] == "=" else 2, title)
                continue
        if not line.strip():
            flush()
            continue
        para.append(line)
    if fence is not None and code:  # unterminated fence: keep it as code
        blocks.append(_Block("\n".join(code), tuple(heading), pending_section, code=True))
    flush()
    return [b for b in blocks if b.text.strip()]


def _split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _word_windows(text: str, size: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def _units(blocks: list[_Block], target_words: int) -> list[_Unit]:
    units: list[_Unit] = []
    for b, block in enumerate(blocks):
        words = len(_WORD.findall(block.text))
        if words <= target_words:
            units.append(_Unit(block.text, words, block.heading, block.starts_section,
                               [] if block.code else _split_sentences(block.text), b))
            continue
        pieces: list[str] = []
        if block.code:
            lines = block.text.split("\n")
            cur: list[str] = []
            for ln in lines:
                if cur and len(_WORD.findall("\n".join([*cur, ln]))) > target_words:
                    pieces.append("\n".join(cur))
                    cur = []
                cur.append(ln)
            if cur:
                pieces.append("\n".join(cur))
            pieces = [q for p in pieces for q in (_word_windows(p, target_words)
                                                  if len(_WORD.findall(p)) > target_words else [p])]
        else:
            for sentence in _split_sentences(block.text):
                if len(_WORD.findall(sentence)) > target_words:
                    pieces.extend(_word_windows(sentence, target_words))
                else:
                    pieces.append(sentence)
        first = True
        for piece in pieces:
            units.append(_Unit(piece, len(_WORD.findall(piece)), block.heading, block.starts_section and first,
                               [] if block.code else [piece], b))
            first = False
    return units


def _tail(units: list[_Unit], overlap_words: int) -> list[str]:
    """Trailing whole sentences of the chunk being closed, up to `overlap_words` words."""
    out: list[str] = []
    total = 0
    for unit in reversed(units):
        for sentence in reversed(unit.sentence_parts or []):
            n = len(_WORD.findall(sentence))
            if total + n > overlap_words:
                if not out and overlap_words > 0:  # one long last sentence: keep its last words
                    out.append(" ".join(sentence.split()[-overlap_words:]))
                return list(reversed(out))
            out.append(sentence)
            total += n
        if not unit.sentence_parts:  # code: no overlap through code
            return list(reversed(out))
    return list(reversed(out))


def chunk_text(
    text: str,
    *,
    markdown: bool,
    target_words: int = 160,
    overlap_words: int = 32,
    min_words: int | None = None,
) -> list[Chunk]:
    if target_words < 8:
        raise ValueError("target_words must be at least 8")
    overlap_words = max(0, min(overlap_words, target_words // 2))
    min_words = target_words // 3 if min_words is None else min_words
    units = _units(_blocks(text, markdown), target_words)
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    prefix: list[str] = []
    words = 0

    def close() -> None:
        nonlocal current, prefix, words
        if current:
            body = current[0].text
            for prev, unit in zip(current, current[1:], strict=False):
                # Pieces of one paragraph (sentences, word windows) rejoin with a space.
                same = prev.block == unit.block and bool(unit.sentence_parts)
                body += (" " if same else "\n\n") + unit.text
            content = (" ".join(prefix) + "\n\n" + body) if prefix else body
            chunks.append(Chunk(len(chunks), content, " > ".join(current[0].heading),
                                len(_WORD.findall(content))))
        current, prefix, words = [], [], 0

    for unit in units:
        if current and unit.starts_section and words >= min_words:
            close()  # a heading starts a new chunk, without overlap
        elif current and words + unit.words > target_words:
            tail = _tail(current, overlap_words)
            close()
            if unit.words + sum(len(_WORD.findall(s)) for s in tail) <= target_words:
                prefix = tail
                words = sum(len(_WORD.findall(s)) for s in tail)
        current.append(unit)
        words += unit.words
    close()
    return chunks
