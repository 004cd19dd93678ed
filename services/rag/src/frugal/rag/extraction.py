"""Text extraction and chunking within a budget, off the event loop.

Small text documents are chunked in a thread (bounded: at most `inline_max_bytes`). Everything else
(every PDF, large text) runs in a child process forked from a forkserver that has pypdf and the
chunker preloaded, so a runaway parser can be killed: the child gets an RLIMIT_CPU of the CPU-seconds
budget and an RLIMIT_AS memory cap, pypdf's decompression limits are set to the inflation budget, the
page count and the extracted text are capped, and the parent kills the child when the caller's
deadline or the wall-clock budget passes. At most `workers` children run at once, so one tenant's
bad documents cannot take every core; other tenants' requests keep their event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import re
import resource
import signal
import time
from dataclasses import dataclass
from typing import Any

from frugal.rag.chunking import Chunk, DocumentError, cap_tokens, chunk_text, extract_text

# Only what a job needs (no NumPy/BLAS: its thread pools do not survive a fork).
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_PRELOAD = ["pypdf", "frugal.rag.chunking", "frugal.encoder.tokens"]


@dataclass(frozen=True, slots=True)
class ExtractionBudget:
    max_inflated_bytes: int  # bytes any one PDF stream may decompress to
    max_pages: int
    cpu_seconds: float
    max_text_chars: int  # extracted text, all pages together
    memory_bytes: int  # address-space cap of the child (0: none)
    wall_seconds: float  # when the caller set no deadline


@dataclass(frozen=True, slots=True)
class ChunkParams:
    markdown: bool
    target_words: int
    overlap_words: int
    max_chars: int
    max_tokens: int  # 0: no word-piece cap
    max_chunks: int  # more chunks than this: refused before the (costlier) word-piece pass


class ExtractionBudgetExceeded(DocumentError):
    """The document needed more than its budget (CPU seconds, inflated bytes, memory, text)."""


class TooManyChunks(ExtractionBudgetExceeded):
    """The document makes more chunks than one document may have."""


class ExtractionDeadline(Exception):
    """The caller's deadline passed during extraction (the child was killed)."""


def _token_offsets(texts: list[str]) -> list[list[tuple[int, int]]]:
    from frugal.encoder.tokens import token_offsets

    return token_offsets(texts)


def extract_and_chunk(content: bytes, content_type: str, params: ChunkParams, budget: ExtractionBudget) -> list[Chunk]:
    """The whole job, synchronously (in the child, or in a thread for small text)."""
    if content_type == "application/pdf":
        import pypdf

        pypdf.overwrite_configuration(
            zlib_maximum_output_length=budget.max_inflated_bytes,
            lzw_maximum_output_length=budget.max_inflated_bytes,
            run_length_maximum_output_length=budget.max_inflated_bytes,
            brotli_maximum_output_length=budget.max_inflated_bytes,
            jbig2_maximum_output_length=budget.max_inflated_bytes,
            stream_decoding_work_maximum_length=budget.max_inflated_bytes,
            array_based_stream_maximum_output_length=budget.max_inflated_bytes,
            image_maximum_buffer_size=budget.max_inflated_bytes,
        )
    text = extract_text(content, content_type, max_pdf_pages=budget.max_pages, max_chars=budget.max_text_chars)
    chunks = chunk_text(text, markdown=params.markdown, target_words=params.target_words,
                        overlap_words=params.overlap_words, max_chars=params.max_chars)
    if len(chunks) > params.max_chunks:
        raise TooManyChunks(
            f"the document makes {len(chunks)} chunks; the limit is "
            f"{params.max_chunks} (MAX_CHUNKS_PER_DOCUMENT, chunks of at most {params.max_chars} characters): split it"
        )
    if params.max_tokens > 0:
        # Every CJK character is at least one word piece: a cheap lower bound on the chunks the
        # word-piece pass will make, checked before paying for tokenising it all.
        least = sum(max(1, -(-len(_CJK.findall(c.content)) // params.max_tokens)) for c in chunks)
        if least > params.max_chunks:
            raise TooManyChunks(
                f"the document makes at least {least} chunks (of at most {params.max_tokens} word pieces); the limit "
                f"is {params.max_chunks} (MAX_CHUNKS_PER_DOCUMENT): split it"
            )
        chunks = cap_tokens(chunks, params.max_tokens, _token_offsets)
        if len(chunks) > params.max_chunks:
            raise TooManyChunks(
                f"the document makes {len(chunks)} chunks (of at most {params.max_tokens} word pieces); the limit "
                f"is {params.max_chunks} (MAX_CHUNKS_PER_DOCUMENT): split it"
            )
    return chunks


def _child(conn: multiprocessing.connection.Connection, content: bytes, content_type: str, params: ChunkParams,
           budget: ExtractionBudget) -> None:
    cpu = max(1, int(budget.cpu_seconds + 0.999))
    # Soft limit: SIGXCPU (default action: terminate); hard limit one second later: SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if budget.memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (budget.memory_bytes, budget.memory_bytes))
    try:
        chunks = extract_and_chunk(content, content_type, params, budget)
    except ExtractionBudgetExceeded as err:
        conn.send(("budget", str(err)))
    except DocumentError as err:
        conn.send(("invalid", str(err)))
    except MemoryError:
        conn.send(("budget", "extraction exceeded its memory budget"))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which maps it
        conn.send(("invalid", f"document could not be read: {type(err).__name__}: {err}"))
    else:
        conn.send(("ok", chunks))
    finally:
        conn.close()


class ExtractionPool:
    def __init__(self, *, workers: int, inline_max_bytes: int) -> None:
        self._slots = asyncio.Semaphore(max(1, workers))
        self._inline_max_bytes = inline_max_bytes
        self._ctx: Any = None

    def _context(self) -> Any:
        if self._ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            self._ctx = ctx
        return self._ctx

    async def run(
        self, content: bytes, content_type: str, params: ChunkParams, budget: ExtractionBudget,
        *, deadline: float | None,
    ) -> list[Chunk]:
        if content_type != "application/pdf" and len(content) <= self._inline_max_bytes:
            return await asyncio.to_thread(extract_and_chunk, content, content_type, params, budget)
        async with self._slots:
            return await self._in_child(content, content_type, params, budget, deadline)

    async def _in_child(
        self, content: bytes, content_type: str, params: ChunkParams, budget: ExtractionBudget,
        deadline: float | None,
    ) -> list[Chunk]:
        ctx = self._context()
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, content, content_type, params, budget), daemon=True)
        await asyncio.to_thread(proc.start)
        child.close()
        limit = time.monotonic() + budget.wall_seconds
        end = limit if deadline is None else min(limit, deadline)
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    if deadline is not None and deadline <= limit:
                        raise ExtractionDeadline("deadline exceeded while extracting the document's text")
                    raise ExtractionBudgetExceeded(
                        f"extracting the document took longer than its budget of {budget.wall_seconds:.0f} s")
                ready = await asyncio.to_thread(parent.poll, min(left, 0.5))
                if ready:
                    try:
                        kind, value = await asyncio.to_thread(parent.recv)
                    except EOFError:
                        kind, value = "died", None
                    break
                if not proc.is_alive():
                    if parent.poll():
                        continue
                    kind, value = "died", None
                    break
        finally:
            if proc.is_alive():
                proc.kill()
            await asyncio.to_thread(proc.join, 5)
            parent.close()
        if kind == "ok":
            result: list[Chunk] = value
            return result
        if kind == "budget":
            raise ExtractionBudgetExceeded(str(value))
        if kind == "invalid":
            raise DocumentError(str(value))
        code = proc.exitcode
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            raise ExtractionBudgetExceeded(
                f"extracting the document used more than its budget of {budget.cpu_seconds:.0f} CPU seconds")
        raise ExtractionBudgetExceeded(f"the extraction process ended abnormally (exit code {code}): "
                                       "the document needs more than its budget (memory or CPU)")

    async def aclose(self) -> None:
        return None
