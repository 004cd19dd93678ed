"""Document text extraction and heading/paragraph-aware chunking with overlap.

A document becomes sections (Markdown ATX or setext headings; code fences are never split or read as
headings), sections become paragraphs, paragraphs longer than a chunk become sentences, and
sentences longer than a chunk become word windows, and any piece longer than `max_chars` characters
(text without spaces: CJK, minified JSON, base64) becomes character windows cut at the last space or
punctuation mark inside the window. Units are packed greedily up to `target_words` and `max_chars`.
A chunk starts at a heading unless the chunk being built is still small (under `min_words`), so
short sections are merged instead of becoming fragments. Consecutive chunks inside one section
overlap by whole trailing sentences (up to `overlap_words`); chunks do not overlap across headings.

`cap_tokens` then splits, at word-piece boundaries, every chunk the embedding model's tokenizer makes
longer than its window (256 word pieces for all-MiniLM-L6-v2), so the whole of every chunk is embedded,
whatever the script. Both caps bound the work of every later stage: tokenising, embedding, the
tsvector (PostgreSQL refuses lexemes over 2047 bytes and tsvectors over 1 MiB) and Retrieve's reply.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CHUNKER_VERSION = "md-para-v2"
DEFAULT_MAX_CHARS = 2000

CONTENT_TYPES = ("text/plain", "text/markdown", "application/pdf")

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+(?=\S)")
_WORD = re.compile(r"\S+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SOFT_BREAK = re.compile(r"[\s,;:.!?)\]}>/|\u3001\u3002\uff0c\uff0e]")


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


def extract_text(content: bytes, content_type: str, *, max_pdf_pages: int = 500, max_chars: int = 0) -> str:
    """Bytes to text. Raises DocumentError with a message fit for the caller. `max_chars` > 0 caps the
    extracted text (a PDF stops being read as soon as it passes the cap)."""
    if content_type == "application/pdf":
        return _pdf_text(content, max_pdf_pages, max_chars)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(
            f"content is not valid UTF-8 (byte {err.start}: {content[err.start:err.start + 1]!r}); "
            "send text as UTF-8"
        ) from None
    if "\x00" in text:
        raise DocumentError("text content contains NUL bytes: is it a binary file sent as text?")
    if max_chars and len(text) > max_chars:
        raise TextTooLong(f"the document has {len(text)} characters of text; the limit is {max_chars} "
                          "(EXTRACT_MAX_TEXT_CHARS): split the document")
    return _clean(text)


class TextTooLong(DocumentError):
    """More extracted text than the budget allows."""


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(" ", text)


def _pdf_text(content: bytes, max_pages: int, max_chars: int) -> str:
    if not content.startswith(b"%PDF-"):
        raise DocumentError("content is not a PDF (missing %PDF- header)")
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError

    texts: list[str] = []
    total = 0
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise DocumentError("PDF is encrypted: send an unencrypted copy")
        pages = reader.pages
        if len(pages) > max_pages:
            raise DocumentError(f"PDF has {len(pages)} pages; the limit is {max_pages}")
        for page in pages:
            t = page.extract_text() or ""
            total += len(t)
            if max_chars and total > max_chars:
                raise TextTooLong(f"the PDF has more than {max_chars} characters of text (the limit)")
            texts.append(t)
    except DocumentError:
        raise
    except LimitReachedError as err:
        raise TextTooLong(f"the PDF exceeds the extraction budget: {err}") from None
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


def char_windows(text: str, max_chars: int) -> list[str]:
    """`text` cut into pieces of at most `max_chars` characters, each cut at the last whitespace or
    punctuation mark in the second half of its window (a hard cut when there is none: base64, CJK)."""
    out: list[str] = []
    start = 0
    n = len(text)
    while n - start > max_chars:
        end = start + max_chars
        cut = end
        for m in _SOFT_BREAK.finditer(text, start + max_chars // 2, end):
            cut = m.end()
        piece = text[start:cut].strip()
        if piece:
            out.append(piece)
        start = cut
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out


def _units(blocks: list[_Block], target_words: int, max_chars: int) -> list[_Unit]:
    units: list[_Unit] = []
    for b, block in enumerate(blocks):
        words = len(_WORD.findall(block.text))
        if words <= target_words and len(block.text) <= max_chars:
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
        pieces = [q for p in pieces for q in (char_windows(p, max_chars) if len(p) > max_chars else [p])]
        first = True
        for piece in pieces:
            units.append(_Unit(piece, len(_WORD.findall(piece)), block.heading, block.starts_section and first,
                               [] if block.code else [piece], b))
            first = False
    return units


def _tail(units: list[_Unit], overlap_words: int, max_chars: int) -> list[str]:
    """Trailing whole sentences of the chunk being closed, up to `overlap_words` words and a quarter of
    `max_chars` characters."""
    out: list[str] = []
    total = 0
    chars = 0
    for unit in reversed(units):
        for sentence in reversed(unit.sentence_parts or []):
            n = len(_WORD.findall(sentence))
            chars += len(sentence) + 1
            if chars > max_chars // 4:
                return list(reversed(out))
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
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Chunk]:
    if target_words < 8:
        raise ValueError("target_words must be at least 8")
    if max_chars < 64:
        raise ValueError("max_chars must be at least 64")
    overlap_words = max(0, min(overlap_words, target_words // 2))
    min_words = target_words // 3 if min_words is None else min_words
    units = _units(_blocks(text, markdown), target_words, max_chars)
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    prefix: list[str] = []
    words = 0
    chars = 0

    def close() -> None:
        nonlocal current, prefix, words, chars
        if current:
            body = current[0].text
            for prev, unit in zip(current, current[1:], strict=False):
                # Pieces of one paragraph (sentences, word windows) rejoin with a space.
                same = prev.block == unit.block and bool(unit.sentence_parts)
                body += (" " if same else "\n\n") + unit.text
            content = (" ".join(prefix) + "\n\n" + body) if prefix else body
            chunks.append(Chunk(len(chunks), content, " > ".join(current[0].heading),
                                len(_WORD.findall(content))))
        current, prefix, words, chars = [], [], 0, 0

    for unit in units:
        if current and unit.starts_section and words >= min_words:
            close()  # a heading starts a new chunk, without overlap
        elif current and (words + unit.words > target_words or chars + len(unit.text) + 2 > max_chars):
            tail = _tail(current, overlap_words, max_chars)
            close()
            tail_chars = sum(len(s) + 1 for s in tail) + 2
            if (unit.words + sum(len(_WORD.findall(s)) for s in tail) <= target_words
                    and tail_chars + len(unit.text) <= max_chars):
                prefix = tail
                words = sum(len(_WORD.findall(s)) for s in tail)
                chars = tail_chars
        current.append(unit)
        words += unit.words
        chars += len(unit.text) + 2
    close()
    return chunks


# Word-piece (start, end) character offsets of each text, without truncation or special tokens.
TokenOffsets = Callable[[list[str]], list[list[tuple[int, int]]]]


def cap_tokens(chunks: Sequence[Chunk], max_tokens: int, offsets_of: TokenOffsets) -> list[Chunk]:
    """Splits each chunk longer than `max_tokens` word pieces into equal parts at word-piece boundaries
    (never inside a word when a word boundary is near), and renumbers. Chunks are already capped in
    characters, so tokenising them is bounded work."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    out: list[Chunk] = []
    offsets = offsets_of([c.content for c in chunks]) if chunks else []
    for chunk, offs in zip(chunks, offsets, strict=True):
        if len(offs) <= max_tokens:
            out.append(Chunk(len(out), chunk.content, chunk.heading, chunk.word_count))
            continue
        parts = -(-len(offs) // max_tokens)
        size = -(-len(offs) // parts)
        text = chunk.content
        start_char = 0
        i = size
        while i < len(offs):
            cut = i
            # Prefer a cut where the next piece starts a new word (there is a gap before it).
            for j in range(i, max(i - size // 4, 1), -1):
                if offs[j][0] > offs[j - 1][1]:
                    cut = j
                    break
            end_char = offs[cut][0]
            piece = text[start_char:end_char].strip()
            if piece:
                out.append(Chunk(len(out), piece, chunk.heading, len(_WORD.findall(piece))))
            start_char = end_char
            i = cut + size
        piece = text[start_char:].strip()
        if piece:
            out.append(Chunk(len(out), piece, chunk.heading, len(_WORD.findall(piece))))
    return out
