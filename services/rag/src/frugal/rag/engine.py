"""The rag service's logic, independent of gRPC: ingest, retrieve, delete, list.

The servicer (server.py) maps the exceptions below to gRPC status codes. The tenant always comes
from the validated request metadata (never from a request body) and reaches PostgreSQL only through
`tenant_transaction`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from frugal.common import errors
from frugal.common.cost_events import CostEventProducer, CostKind
from frugal.common.cost_recorder import CostRecorder
from frugal.common.db import tenant_transaction
from frugal.common.metrics import AI_REQUESTS_TOTAL
from frugal.common.pricing import PriceCatalog
from frugal.common.usage import UsageAmounts
from frugal.rag import store
from frugal.rag.chunking import CHUNKER_VERSION, Chunk, DocumentError, normalise_content_type
from frugal.rag.config import Settings
from frugal.rag.embedding.base import Embedder, EmbeddingBatch, EmbeddingError, InputType, Vector
from frugal.rag.embedding.cache import QueryEmbeddingCache
from frugal.rag.extraction import (
    ChunkParams,
    ExtractionBudget,
    ExtractionBudgetExceeded,
    ExtractionDeadline,
    ExtractionPool,
)
from frugal.rag.fusion import Fused, rrf
from frugal.rag.metrics import (
    CHUNKS_WRITTEN,
    EMBEDDINGS_REUSED,
    INGESTS,
    RERANKS,
    RETRIEVED,
    STAGE_SECONDS,
    TEXTS_EMBEDDED,
    VECTOR_SCANS,
)
from frugal.rag.rerank import Reranker, RerankError

log = logging.getLogger(__name__)

SERVICE = "rag"
Mode = Literal["hybrid", "vector", "lexical"]
RESERVED_METADATA_KEYS = frozenset({"tenant_id", "tenant", "x-tenant-id", "tenant-id"})
MAX_TOP_K = 50
_CHUNK_NS = uuid.UUID("3b0f1c51-8d7e-4c1a-9a55-1f0e6b7c2d90")
INDEX_SIZE_TTL_S = 60.0
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


class RagError(errors.ServiceError):
    """Base of rag's errors; each carries its status code (frugal.common.errors), the message is for the caller."""


class InvalidInput(RagError, errors.InvalidArgument):
    pass


class NotFound(RagError, errors.NotFound):
    pass


class Unavailable(RagError, errors.Unavailable):
    pass


class DeadlineExceeded(RagError, errors.DeadlineExceeded):
    pass


class ProviderRejected(RagError):
    """A provider refused the request for a reason retrying cannot fix (key, model, request shape): INTERNAL."""


class TooLarge(RagError, errors.InvalidArgument):
    """The document needs more than its budget (chunks, extraction CPU, inflated bytes, text): the caller must
    split or simplify it."""


class FailedPrecondition(RagError, errors.FailedPrecondition):
    """The request is valid but the service cannot do it in its current configuration."""


# Model key -> an embedder for it, or None when this deployment cannot embed with that model.
EmbedderFactory = Callable[[str], "Embedder | None"]


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    session_id: str | None
    request_id: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    document_id: str
    content_hash: str
    chunk_count: int
    outcome: Literal["created", "unchanged", "replaced"]
    usage: UsageAmounts
    cost_usd: float
    model: str = ""  # the index model the chunks were embedded with


@dataclass(frozen=True, slots=True)
class RetrievedItem:
    chunk: store.ChunkRow
    score: float
    vector_score: float
    lexical_score: float
    vector_rank: int
    lexical_rank: int


@dataclass(slots=True)
class RetrieveResult:
    items: list[RetrievedItem]
    timings: list[tuple[str, float]]
    embedder_used: bool
    cache_hit: bool
    reranker_used: bool
    rerank_note: str
    notes: list[str] = field(default_factory=list)
    vector_path: str = ""
    embedder: Embedder | None = None  # the one that embedded (or cached) the query


@dataclass(slots=True)
class _Timer:
    operation: str
    stages: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.stages.append((name, elapsed * 1000.0))
            STAGE_SECONDS.labels(operation=self.operation, stage=name).observe(elapsed)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline exceeded before the operation could complete")
    return left


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput("page_token is malformed: pass back next_page_token unchanged") from None
    if not isinstance(value, str):
        raise InvalidInput("page_token is malformed: pass back next_page_token unchanged")
    return value


def _embedding_estimate(texts: list[str]) -> UsageAmounts:
    """What an embedding call sent, by our count (the texts' tokens, about 4 characters each): the recorder bills
    it, labelled estimated, when the call was sent but never answered."""
    return UsageAmounts(input_tokens=sum(max(1, -(-len(t) // 4)) for t in texts), requests=1)


def _rerank_estimate(docs: list[str]) -> UsageAmounts:
    """What a rerank call sent, by our count: one search unit per 100 documents (Cohere's unit)."""
    return UsageAmounts(requests=max(1, -(-len(docs) // 100)))


def _embedding_failure(err: EmbeddingError, what: str) -> RagError:
    if err.timeout:
        return DeadlineExceeded(f"{what}: {err}")
    if not err.retryable:
        return ProviderRejected(f"{what}: {err} (check the VOYAGE_* settings)")
    return Unavailable(f"{what}: {err}")


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


class RagEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool,
        embedder: Embedder,
        cache: QueryEmbeddingCache | None,
        reranker: Reranker | None,
        costs: CostEventProducer | None,
        catalog: PriceCatalog,
        embedder_factory: EmbedderFactory | None = None,
        extraction: ExtractionPool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.embedder = embedder  # the default: the model of every new tenant's index
        self._embedders: dict[str, Embedder] = {embedder.model: embedder}
        self._embedder_factory = embedder_factory
        # Called with the tenant id after a model change is recorded (the re-embedder wakes up).
        self.on_model_change: Callable[[str], None] | None = None
        self.extraction = extraction or ExtractionPool(
            workers=settings.extract_workers, inline_max_bytes=settings.extract_inline_max_bytes
        )
        self.cache = cache
        self.reranker = reranker
        self.costs = costs
        self.catalog = catalog
        self._recorder = CostRecorder(costs, catalog, service=SERVICE)
        self.space = store.VectorSpace(embedder.model, embedder.dimensions)
        # Per space: (vectors in its HNSW index, fetched at).
        self._index_size: dict[str, tuple[int, float]] = {}
        self.check_prices(catalog, embedder, reranker)

    @staticmethod
    def check_prices(catalog: PriceCatalog, embedder: Embedder, reranker: Reranker | None) -> None:
        """Fail at start, not on the first call, when a configured model has no price."""
        catalog.price(embedder.model.split("@", 1)[0])
        if reranker is not None:
            catalog.price(reranker.model)

    # --- cost events --------------------------------------------------------------------------------

    async def _emit(
        self,
        caller: Caller,
        *,
        kind: CostKind,
        provider: str,
        model: str,
        usage: UsageAmounts | None,
        offline: bool,
        event_parts: tuple[str, ...],
        attributes: Mapping[str, str],
        outcome: str = "ok",
        estimate: UsageAmounts | None = None,
    ) -> float:
        """One cost event per provider call (frugal.common.cost_recorder: own id per attempt, the one offline
        rule; `usage` None: the provider reported nothing and the recorder bills `estimate`, labelled). The local
        encoder is a free model of its own, not a stand-in: its catalog entry has no price, so its (offline,
        estimated) events cost 0."""
        # Without a producer (tools, tests) the call is priced all the same and nothing is emitted.
        att = self._recorder.attempt(
            tenant_id=caller.tenant_id, kind=kind, provider=provider, model=model,
            key=(caller.request_id, *event_parts), session_id=caller.session_id, request_id=caller.request_id,
            offline=offline, attributes=attributes, estimate=estimate,
        )
        if usage is not None:
            att.report(usage)
        event = await att.finish(outcome)
        return event.cost_usd

    async def _embed(
        self, caller: Caller, texts: list[str], input_type: InputType, *, deadline: float | None, purpose: str,
        batch_no: int, embedder: Embedder | None = None,
    ) -> tuple[EmbeddingBatch, float]:
        e = embedder or self.embedder
        # Its cost could not be recorded durably: a retryable provider error (UNAVAILABLE; hybrid goes lexical).
        if not e.offline and (unbillable := self._recorder.why_not_spend()) is not None:
            AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="embedding", provider=e.provider, model=e.model,
                                     outcome="cost_recording_unavailable").inc()
            raise EmbeddingError(f"{e.provider}/{e.model} not called: {unbillable}")
        try:
            batch = await e.embed(texts, input_type, budget_s=_remaining(deadline))
        except asyncio.CancelledError:
            if not e.offline:  # the caller went away mid-call; the request may have reached the provider
                await asyncio.shield(self._emit_embedding(caller, e, texts, purpose, batch_no, outcome="cancelled",
                                                          usage=None))
            raise
        except EmbeddingError as err:
            AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="embedding", provider=e.provider, model=e.model,
                                     outcome="timeout" if err.timeout else "error").inc()
            if err.billed_tokens is not None:
                # The provider answered (and charged) but the reply was unusable: billed all the same.
                await self._emit_embedding(caller, e, texts, purpose, batch_no, outcome="unusable_reply",
                                           usage=UsageAmounts(input_tokens=err.billed_tokens, requests=1))
            elif err.timeout and not e.offline:
                # Sent but not answered in time: the provider may bill it; estimated, like vision-dedup's rule.
                await self._emit_embedding(caller, e, texts, purpose, batch_no, outcome="timeout", usage=None)
            raise
        AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="embedding", provider=e.provider, model=e.model,
                                 outcome="ok").inc()
        TEXTS_EMBEDDED.labels(provider=e.provider, purpose=purpose.split(":", 1)[0]).inc(len(texts))
        usage = UsageAmounts(input_tokens=batch.tokens, requests=batch.calls, estimated=batch.estimated)
        cost = await self._emit_embedding(caller, e, texts, purpose, batch_no, usage=usage)
        return batch, cost

    async def _emit_embedding(self, caller: Caller, e: Embedder, texts: list[str], purpose: str, batch_no: int,
                              *, usage: UsageAmounts | None, outcome: str = "ok") -> float:
        # The local encoder is free: its event says offline with cost 0 (and, embedding not being an
        # optimised kind, its billing baseline is its cost, 0), so it shows volume but never savings.
        return await self._emit(
            caller, kind=CostKind.EMBEDDING, provider=e.provider, model=e.model.split("@", 1)[0], usage=usage,
            offline=e.offline, event_parts=(purpose, str(batch_no)),
            attributes={"purpose": purpose, "texts": str(len(texts)), "embedding_model": e.model}, outcome=outcome,
            estimate=_embedding_estimate(texts),
        )

    # --- ingest -------------------------------------------------------------------------------------

    def _validate_ingest(
        self, document_id: str, title: str, content_type: str, content: bytes, metadata: Mapping[str, str]
    ) -> str:
        s = self.settings
        if not document_id or not document_id.strip():
            raise InvalidInput("document_id is required")
        if len(document_id) > s.max_document_id_chars:
            raise InvalidInput(f"document_id is {len(document_id)} characters; the limit is {s.max_document_id_chars}")
        if _has_control(document_id):
            raise InvalidInput("document_id must not contain control characters")
        if len(title) > s.max_title_chars:
            raise InvalidInput(f"title is {len(title)} characters; the limit is {s.max_title_chars}")
        if _has_control(title.replace("\t", " ")):
            raise InvalidInput("title must not contain control characters")
        if not content:
            raise InvalidInput("content is empty")
        if len(content) > s.max_document_bytes:
            raise InvalidInput(
                f"content is {len(content)} bytes; the limit is {s.max_document_bytes} bytes (MAX_DOCUMENT_BYTES): "
                "split the document"
            )
        if len(metadata) > s.max_metadata_entries:
            raise InvalidInput(f"metadata has {len(metadata)} entries; the limit is {s.max_metadata_entries}")
        for key, value in metadata.items():
            if not key or len(key) > 128 or _has_control(key):
                raise InvalidInput(f"metadata key {key[:40]!r} is invalid: 1-128 printable characters")
            if key.lower() in RESERVED_METADATA_KEYS:
                raise InvalidInput(
                    f"metadata key {key!r} is reserved: the tenant comes only from the x-tenant-id call metadata"
                )
            if len(value) > s.max_metadata_value_chars:
                raise InvalidInput(
                    f"metadata value of {key!r} is {len(value)} characters; the limit is {s.max_metadata_value_chars}"
                )
            if "\x00" in value:
                raise InvalidInput(f"metadata value of {key!r} contains a NUL character")
        if not content_type:
            raise InvalidInput("content_type is required: text/plain, text/markdown or application/pdf")
        try:
            return normalise_content_type(content_type)
        except DocumentError as err:
            raise InvalidInput(str(err)) from None

    def _fingerprint(self, content_hash: str, content_type: str, title: str, metadata: Mapping[str, str]) -> str:
        # The embedding model is not part of it: the index's model is the tenant's (one per index), and a
        # model change re-embeds stored chunks without touching their documents.
        s = self.settings
        return _sha256(json.dumps({
            "content": content_hash, "type": content_type, "title": title, "metadata": sorted(metadata.items()),
            "chunker": [CHUNKER_VERSION, s.chunk_target_words, s.chunk_overlap_words, s.max_chunk_chars,
                        s.max_chunk_tokens],
        }, sort_keys=True))

    @staticmethod
    def chunk_context(title: str, chunk: Chunk) -> str:
        """The line prepended to a chunk for embedding and lexical search: title and heading path,
        minus what the chunk's text already starts with."""
        parts = [p for p in chunk.heading.split(" > ") if p] if chunk.heading else []
        first_line = chunk.content.lstrip().split("\n", 1)[0].lstrip("#").strip()
        if parts and first_line == parts[-1]:
            parts = parts[:-1]
        t = title.strip()
        if t and not chunk.content.lstrip().lower().startswith(t.lower()):
            parts = [t, *parts]
        return " > ".join(parts)[:500]

    # --- embedders per model -----------------------------------------------------------------------

    def embedder_for(self, model: str) -> Embedder | None:
        e = self._embedders.get(model)
        if e is None and self._embedder_factory is not None:
            e = self._embedder_factory(model)
            if e is not None:
                self._embedders[model] = e
        return e

    def _require_embedder(self, model: str) -> Embedder:
        e = self.embedder_for(model)
        if e is None:
            raise FailedPrecondition(
                f"this tenant's index uses embedding model {model!r}, which this deployment cannot run "
                "(check the VOYAGE_* settings), or change the index's model with ChangeEmbeddingModel"
            )
        return e

    async def index_state(self, tenant_id: str) -> store.IndexState:
        async with tenant_transaction(self.pool, tenant_id) as conn:
            state = await store.get_index(conn)
        return self._index_or_default(state)

    def _index_or_default(self, state: store.IndexState | None) -> store.IndexState:
        """A tenant with no index row yet: the service's default model, no change running."""
        return state or store.IndexState(self.embedder.model, None)

    async def aclose(self) -> None:
        for e in self._embedders.values():
            if e is not self.embedder:
                await e.aclose()
        await self.extraction.aclose()

    # --- ingest -------------------------------------------------------------------------------------

    def _budget(self) -> ExtractionBudget:
        s = self.settings
        return ExtractionBudget(
            max_inflated_bytes=s.extract_max_inflated_bytes, max_pages=s.max_pdf_pages,
            cpu_seconds=s.extract_cpu_seconds, max_text_chars=s.extract_max_text_chars,
            memory_bytes=s.extract_memory_bytes, wall_seconds=s.extract_wall_seconds,
        )

    async def _extract(self, content: bytes, ctype: str, deadline: float | None) -> list[Chunk]:
        s = self.settings
        # Cheap refusal before any parsing: text longer than the chunk limit allows can only fail.
        if ctype != "application/pdf" and len(content) > 4 * s.max_chunk_chars * s.max_chunks_per_document:
            raise TooLarge(
                f"content is {len(content)} bytes: more text than {s.max_chunks_per_document} chunks of at most "
                f"{s.max_chunk_chars} characters (MAX_CHUNKS_PER_DOCUMENT, MAX_CHUNK_CHARS): split the document"
            )
        params = ChunkParams(markdown=ctype == "text/markdown", target_words=s.chunk_target_words,
                             overlap_words=s.chunk_overlap_words, max_chars=s.max_chunk_chars,
                             max_tokens=s.max_chunk_tokens, max_chunks=s.max_chunks_per_document)
        try:
            return await self.extraction.run(content, ctype, params, self._budget(), deadline=deadline)
        except ExtractionDeadline as err:
            raise DeadlineExceeded(str(err)) from None
        except ExtractionBudgetExceeded as err:
            raise TooLarge(str(err)) from None
        except DocumentError as err:
            raise InvalidInput(str(err)) from None

    async def _embed_all(
        self, caller: Caller, embedder: Embedder, texts: list[str], *, deadline: float | None, purpose: str,
    ) -> tuple[list[Vector], UsageAmounts, float]:
        """Every text, in batches of the embedder's size sent concurrently (the local encoder queues
        them for its workers; a provider gets a few requests in flight). One cost event per batch."""
        step = embedder.max_batch
        starts = list(range(0, len(texts), step))
        slots = asyncio.Semaphore(4)

        async def one(batch_no: int, start: int) -> tuple[EmbeddingBatch, float]:
            async with slots:
                return await self._embed(caller, texts[start:start + step], "document", deadline=deadline,
                                         purpose=purpose, batch_no=batch_no, embedder=embedder)

        tasks = [asyncio.ensure_future(one(n, st)) for n, st in enumerate(starts)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        vectors = [v for batch, _ in results for v in batch.vectors]
        usage = UsageAmounts(input_tokens=sum(b.tokens for b, _ in results), requests=sum(b.calls for b, _ in results),
                             estimated=any(b.estimated for b, _ in results))
        return vectors, usage, sum(c for _, c in results)

    async def ingest(
        self,
        caller: Caller,
        *,
        document_id: str,
        title: str,
        content_type: str,
        content: bytes,
        metadata: Mapping[str, str],
        deadline: float | None = None,
    ) -> IngestResult:
        timer = _Timer("ingest")
        ctype = self._validate_ingest(document_id, title, content_type, content, metadata)
        content_hash = _sha256(content)
        fingerprint = self._fingerprint(content_hash, ctype, title, metadata)
        tenant = caller.tenant_id
        with timer.stage("lookup"):
            existing, first_index = await store.get_document_and_index(self.pool, tenant, document_id)
        if existing is not None and existing.fingerprint == fingerprint:
            INGESTS.labels(outcome="unchanged").inc()
            return IngestResult(document_id, content_hash, existing.chunk_count, "unchanged", UsageAmounts(), 0.0,
                                existing.embedding_model)

        s = self.settings
        with timer.stage("chunk"):
            chunks = await self._extract(content, ctype, deadline)
        if not chunks:
            raise InvalidInput("the document contains no text")
        if len(chunks) > s.max_chunks_per_document:
            raise TooLarge(
                f"the document makes {len(chunks)} chunks; the limit is {s.max_chunks_per_document} "
                "(MAX_CHUNKS_PER_DOCUMENT): split it"
            )
        contexts = [self.chunk_context(title, c) for c in chunks]
        texts = [f"{ctx}\n{c.content}" if ctx else c.content for ctx, c in zip(contexts, chunks, strict=True)]
        hashes = [_sha256(t) for t in texts]
        tokens = calls = 0
        estimated = False
        cost = 0.0
        for attempt in range(3):
            # The state read with the lookup first; again after a model change raced this ingest.
            index = self._index_or_default(first_index) if attempt == 0 else await self.index_state(tenant)
            models = [index.model] + ([index.target_model] if index.target_model else [])
            vectors: list[dict[str, str]] = []
            for n, model in enumerate(models):
                embedder = self._require_embedder(model)
                reuse: dict[str, str] = {}
                if existing is not None:
                    reuse = await store.reusable_embeddings(self.pool, tenant, document_id, model)
                todo = sorted({h: i for i, h in reversed(list(enumerate(hashes))) if h not in reuse}.values())
                EMBEDDINGS_REUSED.inc(len([h for h in hashes if h in reuse]))
                found: dict[str, str] = dict(reuse)
                with timer.stage("embed"):
                    try:
                        vecs, usage, c = await self._embed_all(
                            caller, embedder, [texts[i] for i in todo], deadline=deadline,
                            purpose=f"ingest:{content_hash[:16]}:{attempt}:{n}",
                        )
                    except EmbeddingError as err:
                        raise _embedding_failure(err, "embedding failed, nothing was stored") from None
                tokens += usage.input_tokens
                calls += usage.requests
                estimated = estimated or usage.estimated
                cost += c
                for i, vec in zip(todo, vecs, strict=True):
                    found[hashes[i]] = store.vector_literal(vec)
                vectors.append(found)
            new_chunks = [
                store.NewChunk(
                    # Deterministic: the same version of a document always gets the same chunk ids.
                    chunk_id=str(uuid.uuid5(_CHUNK_NS, f"{tenant}\x1f{document_id}\x1f{fingerprint}\x1f{c.index}")),
                    chunk_index=c.index, heading=c.heading, context=ctx, content=c.content,
                    text_hash=h, embedding=vectors[0][h], next_embedding=vectors[1][h] if len(vectors) > 1 else None,
                )
                for c, ctx, h in zip(chunks, contexts, hashes, strict=True)
            ]
            doc = store.NewDocument(
                document_id=document_id, title=title, content_type=ctype, content_hash=content_hash,
                fingerprint=fingerprint, size_bytes=len(content), embedding_model=index.model,
                metadata=dict(metadata),
            )
            _remaining(deadline)
            with timer.stage("write"):
                try:
                    written = await store.write_document(self.pool, tenant, doc, new_chunks, index=index)
                    break
                except store.IndexModelChanged:
                    # A model change started or completed while this document was being embedded.
                    log.info("index model of %s changed during ingest of %s; embedding again", tenant, document_id)
        else:
            raise Unavailable("the index's embedding model kept changing during ingest; retry")
        INGESTS.labels(outcome=written.outcome).inc()
        if written.outcome != "unchanged":
            CHUNKS_WRITTEN.inc(len(new_chunks))
        usage = UsageAmounts(input_tokens=tokens, requests=calls, estimated=estimated)
        outcome: Literal["created", "unchanged", "replaced"] = written.outcome  # type: ignore[assignment]
        log.info("ingested %s: %s, %d chunks", document_id, outcome, len(new_chunks))
        return IngestResult(document_id, content_hash, written.document.chunk_count, outcome, usage, cost,
                            index.model)

    # --- delete / list ------------------------------------------------------------------------------

    async def delete_document(self, caller: Caller, document_id: str) -> int:
        if not document_id:
            raise InvalidInput("document_id is required")
        if len(document_id) > self.settings.max_document_id_chars:
            raise InvalidInput("document_id is too long")
        deleted = await store.delete_document(self.pool, caller.tenant_id, document_id)
        if deleted is None:
            raise NotFound(f"document {document_id!r} not found")
        return deleted

    async def list_documents(
        self, caller: Caller, *, page_size: int, page_token: str
    ) -> tuple[list[store.DocumentRow], str]:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidInput(f"page_size must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
        size = page_size or DEFAULT_PAGE_SIZE
        after = decode_page_token(page_token) if page_token else None
        docs, more = await store.list_documents(self.pool, caller.tenant_id, page_size=size, after=after)
        return docs, (encode_page_token(docs[-1].document_id) if more and docs else "")

    # --- the index's embedding model ----------------------------------------------------------------

    async def index_progress(self, caller: Caller) -> store.IndexProgress:
        return await store.index_progress(self.pool, caller.tenant_id, self.embedder.model)

    async def change_model(self, caller: Caller, model: str) -> store.IndexProgress:
        """Explicit model change of the caller's index: re-embedding runs in the background (see
        reembed.py); retrieval uses the current vectors until every chunk has its new one. Asking for
        the current model cancels a change in progress."""
        model = model.strip()
        if not model:
            raise InvalidInput("model is required, e.g. all-minilm-l6-v2, voyage-3.5-lite or voyage-3.5-lite@2048")
        try:
            store.VectorSpace(model, 1)
        except ValueError:
            raise InvalidInput(f"model {model[:80]!r} is not a valid model key") from None
        e = self.embedder_for(model)
        if e is None:
            raise FailedPrecondition(
                f"embedding model {model!r} is not available in this deployment (Voyage models need VOYAGE_API_KEY)"
            )
        try:
            self.catalog.price(e.model.split("@", 1)[0])
        except Exception as err:  # noqa: BLE001 - PriceCatalogError and friends: no unpriced paid calls
            raise FailedPrecondition(f"embedding model {model!r} has no price in the catalog: {err}") from None
        await store.request_model_change(self.pool, caller.tenant_id, self.embedder.model, e.model)
        if self.on_model_change is not None:
            self.on_model_change(caller.tenant_id)
        return await self.index_progress(caller)

    # --- retrieve -----------------------------------------------------------------------------------

    async def _query_vector(
        self, caller: Caller, e: Embedder, query: str, deadline: float | None
    ) -> tuple[Vector, bool]:
        if self.cache is not None:
            hit = await self.cache.get(caller.tenant_id, e.model, e.dimensions, query)
            if hit is not None:
                return hit, True
        batch, _ = await self._embed(caller, [query], "query", deadline=deadline, purpose="query", batch_no=0,
                                     embedder=e)
        vec = batch.vectors[0]
        if self.cache is not None:
            await self.cache.put(caller.tenant_id, e.model, query, vec)
        return vec, False

    async def _vector_candidates(
        self, conn: asyncpg.Connection, space: store.VectorSpace, stats: store.TenantStats, qvec: Vector, n: int
    ) -> tuple[list[tuple[str, float]], str]:
        count = stats.chunks_by_model.get(space.model_key, 0)
        if count == 0:
            return [], "empty"
        literal = store.vector_literal(qvec)
        if not space.indexed or count <= self.settings.exact_scan_max_chunks or (
            await self._small_share(conn, space, count, n)
        ):
            VECTOR_SCANS.labels(path="exact").inc()
            return await store.vector_search(conn, space, literal, n, exact=True), "exact"
        rows = await store.vector_search(conn, space, literal, n, exact=False)
        if len(rows) >= min(n, count):
            VECTOR_SCANS.labels(path="hnsw").inc()
            return rows, "hnsw"
        # The iterative scan hit hnsw.max_scan_tuples before finding enough of this tenant's rows
        # (a small tenant among many large ones): an exact scan of the tenant's rows is complete.
        VECTOR_SCANS.labels(path="exact_fallback").inc()
        return await store.vector_search(conn, space, literal, n, exact=True), "exact_fallback"

    async def _small_share(self, conn: asyncpg.Connection, space: store.VectorSpace, count: int, n: int) -> bool:
        ratio = self.settings.hnsw_cost_ratio
        if ratio <= 0:
            return False
        now = time.monotonic()
        cached = self._index_size.get(space.model_key)
        if cached is None or now - cached[1] > INDEX_SIZE_TTL_S:
            cached = (await store.indexed_vectors_estimate(conn, space), now)
            self._index_size[space.model_key] = cached
        total = cached[0]
        return total > 0 and count * count < ratio * n * max(total, count)

    def validate_query(self, query: str, top_k: int, max_top_k: int = MAX_TOP_K) -> tuple[str, int]:
        q = query.strip()
        if not q:
            raise InvalidInput("query is empty")
        if len(q) > self.settings.max_query_chars:
            raise InvalidInput(f"query is {len(q)} characters; the limit is {self.settings.max_query_chars}")
        if "\x00" in q:
            raise InvalidInput("query contains a NUL character")
        if top_k < 0 or top_k > max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {max_top_k} (0 means {self.settings.default_top_k})")
        return q, top_k or self.settings.default_top_k

    async def retrieve(
        self,
        caller: Caller,
        *,
        query: str,
        top_k: int,
        mode: Mode = "hybrid",
        rerank: bool = False,
        deadline: float | None = None,
        candidates: int | None = None,
        max_top_k: int = MAX_TOP_K,
    ) -> RetrieveResult:
        """`candidates` and `max_top_k` exist for the offline evaluation harness (bench/rag), which
        needs up to 100 results; the RPC uses the defaults."""
        started = time.perf_counter()
        timer = _Timer("retrieve")
        q, k = self.validate_query(query, top_k, max_top_k)
        s = self.settings
        n = candidates or max(s.retrieve_candidates, 4 * k)
        use_vector = mode in ("hybrid", "vector")
        use_lexical = mode in ("hybrid", "lexical")
        result = RetrieveResult([], [], embedder_used=False, cache_hit=False, reranker_used=False, rerank_note="")

        qvec: Vector | None = None
        index_model: str | None = None
        if use_vector:
            with timer.stage("embed"):
                # The tenant's index model (the old one until a model change completes).
                index_model = (await self.index_state(caller.tenant_id)).model
                qvec = await self._embed_query(caller, index_model, q, deadline, mode, result)

        rerank_with = self.reranker if rerank else None
        take = min(max(s.rerank_candidates, k), n) if rerank_with is not None else k
        left = _remaining(deadline)
        # Always a statement timeout: the caller's remaining time, capped (no deadline: the cap).
        timeout_ms = s.retrieve_statement_timeout_ms
        if left is not None:
            timeout_ms = max(1, min(timeout_ms, int(left * 1000)))
        vec_rows: list[tuple[str, float]] = []
        lex_rows: list[tuple[str, float]] = []
        # One snapshot for the index check, the stats and both searches: a model change that commits while
        # this runs must not leave the vector search filtering on the old model over the new rows (no results).
        async with tenant_transaction(self.pool, caller.tenant_id, snapshot=True) as conn:
            await store.configure_scan(
                conn, ef_search=min(1000, max(s.hnsw_ef_search, n)), max_scan_tuples=s.hnsw_max_scan_tuples,
                scan_mem_multiplier=s.hnsw_scan_mem_multiplier, statement_timeout_ms=timeout_ms,
            )
            stats = await store.tenant_stats(conn)
            if qvec is not None and index_model is not None:
                # A model change may have swapped the index since the query was embedded (its old vectors
                # are gone): embed again with the index's model as it is now.
                now_model = self._index_or_default(await store.get_index(conn)).model
                if now_model != index_model:
                    qvec = await self._embed_query(caller, now_model, q, deadline, mode, result)
            if qvec is not None and result.embedder is not None:
                space = store.VectorSpace(result.embedder.model, result.embedder.dimensions)
                with timer.stage("vector"):
                    vec_rows, result.vector_path = await self._vector_candidates(conn, space, stats, qvec, n)
            if use_lexical:
                with timer.stage("lexical"):
                    lex_rows = await store.lexical_search(
                        conn, q, n, stats, k1=s.bm25_k1, b=s.bm25_b, max_terms=s.bm25_max_query_terms,
                        max_postings=max(s.bm25_max_postings_per_term, n),
                    )
            with timer.stage("fuse"):
                if mode == "hybrid":
                    fused = rrf(vec_rows, lex_rows, k=s.rrf_k, vector_weight=s.rrf_vector_weight,
                                lexical_weight=s.rrf_lexical_weight)
                else:
                    fused = rrf(vec_rows, lex_rows, k=s.rrf_k)
                    for f in fused:  # single list: its own score is the score
                        f.score = f.vector_score if mode == "vector" else f.lexical_score
                picked = fused[:take]
            with timer.stage("fetch"):
                rows = await store.fetch_chunks(conn, [f.chunk_id for f in picked])

        items = [self._item(f, rows[f.chunk_id]) for f in picked if f.chunk_id in rows]
        if rerank_with is not None and items:
            with timer.stage("rerank"):
                items, result.rerank_note = await self._rerank(caller, rerank_with, q, items, k, deadline)
                result.reranker_used = not result.rerank_note.startswith("rerank failed")
        elif rerank:
            RERANKS.labels(outcome="skipped_no_key").inc()
            result.rerank_note = ("rerank requested but no reranker is configured (COHERE_API_KEY is not set): "
                                  "results are in fused order")
        elif self.reranker is not None:
            result.rerank_note = "rerank not requested"
        else:
            result.rerank_note = "no reranker configured (COHERE_API_KEY is not set); rerank not requested"
        result.items = items[:k]
        timer.stages.append(("total", (time.perf_counter() - started) * 1000.0))
        STAGE_SECONDS.labels(operation="retrieve", stage="total").observe(time.perf_counter() - started)
        RETRIEVED.observe(len(result.items))
        result.timings = timer.stages
        return result

    async def _embed_query(
        self, caller: Caller, model: str, query: str, deadline: float | None, mode: Mode, result: RetrieveResult
    ) -> Vector | None:
        """The query's vector in `model`'s space (sets the result's embedder); None when it cannot be made
        and the mode has a lexical half (noted in the result); a vector-only retrieval fails instead."""
        try:
            # Vector-only: a model this deployment cannot run is its configuration's problem, as on ingest.
            e = self._require_embedder(model) if mode == "vector" else self.embedder_for(model)
            if e is None:
                raise EmbeddingError(f"the index's model {model!r} is not available here", retryable=False)
            qvec, result.cache_hit = await self._query_vector(caller, e, query, deadline)
        except EmbeddingError as err:
            if mode == "vector":
                raise _embedding_failure(err, "query embedding failed") from None
            result.embedder, result.embedder_used = None, False
            result.notes.append(f"vector search skipped, lexical results only: {err}")
            log.warning("query embedding failed; lexical only: %s", err)
            return None
        result.embedder, result.embedder_used = e, True
        return qvec

    @staticmethod
    def _item(f: Fused, row: store.ChunkRow) -> RetrievedItem:
        return RetrievedItem(row, f.score, f.vector_score, f.lexical_score, f.vector_rank, f.lexical_rank)

    async def _emit_rerank(self, caller: Caller, reranker: Reranker, docs: list[str], usage: UsageAmounts | None,
                           outcome: str) -> None:
        await self._emit(caller, kind=CostKind.RERANK, provider=reranker.provider, model=reranker.model,
                         usage=usage, offline=False, event_parts=("rerank",),
                         attributes={"documents": str(len(docs))}, outcome=outcome, estimate=_rerank_estimate(docs))

    async def _rerank(
        self, caller: Caller, reranker: Reranker, query: str, items: list[RetrievedItem], k: int,
        deadline: float | None,
    ) -> tuple[list[RetrievedItem], str]:
        docs = [f"{it.chunk.title}\n{it.chunk.content}" if it.chunk.title else it.chunk.content for it in items]
        if (unbillable := self._recorder.why_not_spend()) is not None:
            AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="rerank", provider=reranker.provider,
                                     model=reranker.model, outcome="cost_recording_unavailable").inc()
            return items, f"rerank failed, results are in fused order: {reranker.model} not called: {unbillable}"
        try:
            res = await reranker.rerank(query, docs, k, budget_s=_remaining(deadline))
        except asyncio.CancelledError:  # the caller went away mid-call; the request may have reached Cohere
            await asyncio.shield(self._emit_rerank(caller, reranker, docs, None, "cancelled"))
            raise
        except (RerankError, DeadlineExceeded) as err:
            RERANKS.labels(outcome="error").inc()
            AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="rerank", provider=reranker.provider,
                                     model=reranker.model, outcome="error").inc()
            log.warning("rerank failed, fused order kept: %s", err)
            if isinstance(err, RerankError) and err.billed is not None:
                # Cohere answered (and charged) but the reply was unusable: the search is billed all the same.
                usage = UsageAmounts(requests=err.billed.search_units, estimated=err.billed.estimated)
                await self._emit_rerank(caller, reranker, docs, usage, "unusable_reply")
            elif isinstance(err, RerankError) and err.timeout:
                await self._emit_rerank(caller, reranker, docs, None, "timeout")
            return items, f"rerank failed, results are in fused order: {err}"
        RERANKS.labels(outcome="ok").inc()
        AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="rerank", provider=reranker.provider, model=reranker.model,
                                 outcome="ok").inc()
        await self._emit_rerank(caller, reranker, docs, UsageAmounts(requests=res.search_units,
                                                                     estimated=res.estimated), "ok")
        out = [
            RetrievedItem(items[i].chunk, score, items[i].vector_score, items[i].lexical_score,
                          items[i].vector_rank, items[i].lexical_rank)
            for i, score in res.order
        ]
        return out, f"reranked {len(docs)} fused candidates with {reranker.provider}/{reranker.model}"
