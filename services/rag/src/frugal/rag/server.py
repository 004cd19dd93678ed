"""gRPC wiring of the rag service."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from frugal.api.common.v1 import common_pb2
from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.common.cost_events import CostEventProducer
from frugal.common.db import create_pool
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.migrations import apply_migrations
from frugal.common.pricing import PriceCatalog, default_catalog
from frugal.common.redis_client import aclose_cost_redis, create_cost_redis, create_redis
from frugal.common.tenancy import current_identity
from frugal.rag import store
from frugal.rag.config import Settings
from frugal.rag.embedding.base import Embedder, provider_info
from frugal.rag.embedding.cache import QueryEmbeddingCache
from frugal.rag.engine import (
    Caller,
    InvalidInput,
    Mode,
    RagEngine,
    RagError,
    Unavailable,
)
from frugal.rag.reembed import Reembedder
from frugal.rag.rerank import Reranker

SERVICE_NAME = service_full_name(rag_pb2.DESCRIPTOR, "RagService")
MIGRATIONS_PACKAGE = "frugal.rag.migrations"
APP_ROLE = "frugal_rag"

log = logging.getLogger(__name__)

_MODES: dict[int, Mode] = {
    rag_pb2.RETRIEVAL_MODE_UNSPECIFIED: "hybrid",
    rag_pb2.RETRIEVAL_MODE_HYBRID: "hybrid",
    rag_pb2.RETRIEVAL_MODE_VECTOR: "vector",
    rag_pb2.RETRIEVAL_MODE_LEXICAL: "lexical",
}
_OUTCOMES = {
    "created": rag_pb2.INGEST_OUTCOME_CREATED,
    "unchanged": rag_pb2.INGEST_OUTCOME_UNCHANGED,
    "replaced": rag_pb2.INGEST_OUTCOME_REPLACED,
}
T = TypeVar("T")


def _caller() -> Caller:
    ident = current_identity()
    if ident is None or ident.tenant_id is None:  # the interceptor guarantees both; defensive
        raise InvalidInput("missing tenant identity")
    return Caller(ident.tenant_id, ident.session_id, ident.request_id)


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _ts(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


class RagServiceServicer(rag_pb2_grpc.RagServiceServicer):
    def __init__(self, engine: RagEngine) -> None:
        self.engine = engine

    async def _call(self, context: grpc.aio.ServicerContext[Any, Any], fn: Callable[[], Awaitable[T]]) -> T:
        """Database failures get rag's own wording (nothing was changed); everything else, RagErrors included,
        maps through the one mapping (frugal.common.errors) in the server interceptor."""
        try:
            return await fn()
        except asyncpg.ProgramLimitExceededError as err:
            # Chunks are capped, so this should not happen; if it does it is the input's size, not ours.
            log.warning("database size limit: %s", err)
            raise InvalidInput(f"the document exceeds a database size limit ({err}); split it. "
                               "Nothing was changed") from err
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as err:
            log.warning("database unavailable: %s", err)
            raise Unavailable("database unavailable, retry later") from err
        except (asyncpg.QueryCanceledError, asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
            raise  # DEADLINE_EXCEEDED / ABORTED through the one mapping
        except asyncpg.PostgresError as err:
            log.error("database error: %s", err, exc_info=err)
            raise RagError(f"database error ({type(err).__name__}); nothing was changed") from err

    async def IngestDocument(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = _caller()
        result = await self._call(context, lambda: self.engine.ingest(
            caller, document_id=request.document_id, title=request.title, content_type=request.content_type,
            content=request.content, metadata=dict(request.metadata), deadline=_deadline(context),
        ))
        return rag_pb2.IngestDocumentResponse(
            document_id=result.document_id, content_hash=result.content_hash, chunk_count=result.chunk_count,
            outcome=_OUTCOMES[result.outcome], embedder=provider_info(self.engine.embedder_for(result.model)
                                                                    or self.engine.embedder),
            usage=result.usage.to_proto(), cost_usd=result.cost_usd,
        )

    async def Retrieve(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = _caller()
        mode = _MODES.get(request.mode)
        if mode is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown retrieval mode {request.mode}")
        result = await self._call(context, lambda: self.engine.retrieve(
            caller, query=request.query, top_k=request.top_k, mode=mode, rerank=request.rerank,
            deadline=_deadline(context),
        ))
        reranker = self.engine.reranker
        return rag_pb2.RetrieveResponse(
            chunks=[
                rag_pb2.RetrievedChunk(
                    chunk_id=it.chunk.chunk_id, document_id=it.chunk.document_id, title=it.chunk.title,
                    chunk_index=it.chunk.chunk_index, content=it.chunk.content, score=it.score,
                    vector_score=it.vector_score, lexical_score=it.lexical_score, vector_rank=it.vector_rank,
                    lexical_rank=it.lexical_rank, metadata=it.chunk.metadata,
                )
                for it in result.items
            ],
            timings=[rag_pb2.StageTiming(stage=name, ms=ms) for name, ms in result.timings],
            embedder=provider_info(result.embedder) if result.embedder_used and result.embedder else None,
            embedding_cache_hit=result.cache_hit,
            reranker=(common_pb2.ProviderInfo(provider=reranker.provider, model=reranker.model, offline=False)
                      if result.reranker_used and reranker is not None else None),
            rerank_note=result.rerank_note,
            notes=result.notes,
        )

    async def DeleteDocument(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = _caller()
        deleted = await self._call(context, lambda: self.engine.delete_document(caller, request.document_id))
        return rag_pb2.DeleteDocumentResponse(document_id=request.document_id, chunks_deleted=deleted)

    async def ChangeEmbeddingModel(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = _caller()
        progress = await self._call(context, lambda: self.engine.change_model(caller, request.model))
        return rag_pb2.ChangeEmbeddingModelResponse(index=_index_status(progress))

    async def ListDocuments(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = _caller()
        # The index state first: a model swap commits documents and index together, so documents read after an
        # index that says "swapped" are swapped too (the other order could show a finished change beside
        # documents still on the old model).
        progress = await self._call(context, lambda: self.engine.index_progress(caller))
        docs, token = await self._call(context, lambda: self.engine.list_documents(
            caller, page_size=request.page_size, page_token=request.page_token,
        ))
        return rag_pb2.ListDocumentsResponse(
            documents=[
                rag_pb2.DocumentInfo(
                    document_id=d.document_id, title=d.title, content_type=d.content_type,
                    content_hash=d.content_hash, chunk_count=d.chunk_count, size_bytes=d.size_bytes,
                    embedding_model=d.embedding_model, created_at=_ts(d.created_at), updated_at=_ts(d.updated_at),
                    metadata=d.metadata,
                )
                for d in docs
            ],
            next_page_token=token,
            index=_index_status(progress),
        )


def _index_status(p: store.IndexProgress) -> Any:
    st = p.state
    return rag_pb2.EmbeddingIndexStatus(
        model=st.model, target_model=st.target_model or "", chunks_total=p.chunks_total,
        chunks_reembedded=p.chunks_reembedded,
        requested_at=_ts(st.requested_at) if st.requested_at else None,
        completed_at=_ts(st.completed_at) if st.completed_at else None,
        last_error=st.last_error,
    )


def _voyage(settings: Settings, model: str, dims: int) -> Embedder:
    from frugal.rag.embedding.voyage import VoyageEmbedder

    assert settings.voyage_api_key is not None
    return VoyageEmbedder(
        api_key=settings.voyage_api_key.get_secret_value(), model=model, dimensions=dims,
        base_url=settings.voyage_base_url, timeout_s=settings.voyage_timeout_s,
        max_retries=settings.voyage_max_retries, max_batch=settings.voyage_batch_size,
    )


def _local(settings: Settings) -> Embedder:
    from frugal.encoder.minilm import load_encoder
    from frugal.rag.embedding.local import LocalEmbedder

    encoder = load_encoder(runtime=settings.encoder_runtime or None)
    return LocalEmbedder(encoder, max_batch=settings.local_batch_size,
                         blas_threads=settings.local_encoder_threads or None, workers=settings.local_encoder_workers,
                         length_window=settings.local_length_window, batch_tokens=settings.local_batch_tokens)


def _has_voyage(settings: Settings) -> bool:
    return settings.voyage_api_key is not None and bool(settings.voyage_api_key.get_secret_value())


def build_embedder(settings: Settings) -> Embedder:
    if _has_voyage(settings):
        return _voyage(settings, settings.voyage_model, settings.voyage_dimensions)
    log.info("VOYAGE_API_KEY not set: embeddings by the local all-MiniLM-L6-v2 encoder (offline)")
    return _local(settings)


def embedder_factory(settings: Settings) -> Callable[[str], Embedder | None]:
    """Embedders for the other models a tenant's index may use (after an explicit model change): the
    local encoder always; Voyage models ("name" or "name@dims") when a key is set."""
    from frugal.encoder.minilm import MODEL_NAME
    from frugal.rag.embedding.voyage import DEFAULT_DIMENSIONS

    def make(model: str) -> Embedder | None:
        if model == MODEL_NAME:
            return _local(settings)
        if not _has_voyage(settings):
            return None
        name, _, dims_s = model.partition("@")
        dims = int(dims_s) if dims_s.isdigit() else DEFAULT_DIMENSIONS.get(name, 0)
        if name not in DEFAULT_DIMENSIONS or dims not in (256, 512, 1024, 2048):
            return None
        return _voyage(settings, name, dims)

    return make


def build_reranker(settings: Settings) -> Reranker | None:
    if settings.cohere_api_key is None or not settings.cohere_api_key.get_secret_value():
        log.info("COHERE_API_KEY not set: no reranker (responses say so in rerank_note)")
        return None
    from frugal.rag.rerank import CohereReranker

    return CohereReranker(
        api_key=settings.cohere_api_key.get_secret_value(), model=settings.cohere_rerank_model,
        base_url=settings.cohere_base_url, timeout_s=settings.cohere_timeout_s,
        max_retries=settings.cohere_max_retries,
    )


async def build_app(settings: Settings, *, catalog: PriceCatalog | None = None) -> GrpcApp:
    if settings.migration_database_url:
        applied = await apply_migrations(
            settings.migration_database_url, package=MIGRATIONS_PACKAGE, component="rag", app_role=APP_ROLE
        )
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    catalog = catalog or default_catalog(settings.price_catalog_path)
    embedder = build_embedder(settings)
    reranker = build_reranker(settings)
    try:
        # Before any connection is opened: an unpriced model stops the service here.
        RagEngine.check_prices(catalog, embedder, reranker)
        pool = await create_pool(
            settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
            application_name="rag",
        )
    except BaseException:
        await embedder.aclose()
        if reranker is not None:
            await reranker.aclose()
        raise
    redis = create_redis(settings.redis_url)
    cost_redis = create_cost_redis(settings, redis)
    costs = CostEventProducer.from_settings(settings, cost_redis)
    engine = RagEngine(
        settings, pool=pool, embedder=embedder, cache=QueryEmbeddingCache(redis, settings.embedding_cache_ttl),
        reranker=reranker, costs=costs, catalog=catalog, embedder_factory=embedder_factory(settings),
    )
    reembedder = Reembedder(engine, batch=settings.reembed_batch_size, retry_s=settings.reembed_retry_seconds)
    reembedder.start()
    app = GrpcApp(settings, services=[SERVICE_NAME])
    rag_pb2_grpc.add_RagServiceServicer_to_server(RagServiceServicer(engine), app.server)

    async def close() -> None:
        await reembedder.aclose()
        await engine.aclose()
        await costs.aclose()
        await embedder.aclose()
        if reranker is not None:
            await reranker.aclose()
        await pool.close()
        await aclose_cost_redis(cost_redis, redis)
        await redis.aclose()

    app.on_shutdown(close)
    return app
