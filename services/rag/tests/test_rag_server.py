"""Service wiring: configuration validation, migrations applied at start, health and reflection."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.common.settings import ConfigError, load_settings
from frugal.devkit.pytest_plugin import with_user
from frugal.rag.config import Settings
from frugal.rag.server import SERVICE_NAME, build_app


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VOYAGE_DIMENSIONS": "300"}, "VOYAGE_DIMENSIONS"),
        ({"EMBEDDING_CACHE_TTL": "-1"}, "EMBEDDING_CACHE_TTL"),
        ({"HNSW_EF_SEARCH": "5000"}, "HNSW_EF_SEARCH"),
        ({"RRF_K": "0"}, "RRF_K"),
        ({"CHUNK_TARGET_WORDS": "40", "CHUNK_OVERLAP_WORDS": "30"}, "CHUNK_OVERLAP_WORDS"),
    ],
)
def test_bad_settings_stop_the_service_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], needle: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError):
        load_settings(Settings)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_defaults() -> None:
    s = Settings()
    assert (s.grpc_port, s.metrics_port, s.embedding_cache_ttl) == (50053, 9103, 604800)
    assert s.voyage_api_key is None and s.cohere_api_key is None


async def test_build_app_applies_migrations_and_serves(new_database: object, redis_url: str) -> None:
    admin = await new_database()  # type: ignore[operator]
    settings = Settings(
        database_url=with_user(admin, "frugal_rag"), migration_database_url=admin, redis_url=redis_url,
        grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, shutdown_delay_seconds=0.0,
    )
    app = await build_app(settings)
    port = await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            names: list[str] = []
            ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            async for resp in refl.ServerReflectionInfo(ask):
                names += [s.name for s in resp.list_services_response.service]
            assert SERVICE_NAME in names
            stub = rag_pb2_grpc.RagServiceStub(ch)
            meta = (("x-tenant-id", "org_wiring"), ("x-session-id", "s"))
            r = await stub.IngestDocument(rag_pb2.IngestDocumentRequest(
                document_id="d", content_type="text/plain", content=b"hello wiring"), metadata=meta)
            assert r.outcome == rag_pb2.INGEST_OUTCOME_CREATED
    finally:
        await app.stop(0.5)
    conn = await asyncpg.connect(admin)
    try:
        applied = await conn.fetch("SELECT name FROM frugal_migrations WHERE component = 'rag'")
        assert [r["name"] for r in applied] == ["init", "bounded_bm25_and_index_models", "lean_chunk_writes"]
        role = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'frugal_rag'")
        assert tuple(role) == (False, False)
    finally:
        await conn.close()
    # A second start finds nothing to apply and serves the same data.
    app2 = await build_app(settings)
    await app2.start()
    await app2.stop(0.5)
