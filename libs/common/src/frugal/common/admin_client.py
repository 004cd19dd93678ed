"""Setting a tenant up over the mesh's own APIs: upsert its policy in billing, ingest a folder of Markdown
into its knowledge base. Used by `make demo` (frugal.devkit.demo) and by the compose bootstrap (`make up`),
so both set up the same tenant the same way; the tenant itself is data (demo/tenant.json)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.common.grpc_client import create_channel, outgoing_metadata


def load_policy(path: Path) -> billing_pb2.TenantPolicy:
    """A TenantPolicy from its proto JSON form (camelCase or snake_case field names)."""
    return json_format.Parse(path.read_text(encoding="utf-8"), billing_pb2.TenantPolicy())


async def upsert_tenant(billing_addr: str, policy: billing_pb2.TenantPolicy, *, timeout_s: float = 15) -> bool:
    """UpsertTenant; True when the tenant was created (False: it existed and was updated)."""
    async with create_channel(billing_addr) as ch:
        resp = await billing_pb2_grpc.BillingServiceStub(ch).UpsertTenant(
            billing_pb2.UpsertTenantRequest(policy=policy),
            metadata=outgoing_metadata(tenant_id=policy.tenant_id, session_id="tenant-setup"), timeout=timeout_s)
    return resp.created


@dataclass(frozen=True, slots=True)
class Ingested:
    document_id: str
    chunks: int
    outcome: str
    embedder: str
    offline: bool
    cost_usd: float


async def ingest_markdown_folder(rag_addr: str, folder: Path, tenant_id: str, *,
                                 timeout_s: float = 120) -> list[Ingested]:
    """Ingests every `*.md` of `folder` as document `kb/<file name>` (idempotent: rag dedups by content)."""
    docs = await asyncio.to_thread(lambda: [(p, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.md"))])
    out: list[Ingested] = []
    async with create_channel(rag_addr) as ch:
        stub = rag_pb2_grpc.RagServiceStub(ch)
        for path, text in docs:
            title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), path.stem)
            resp = await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(document_id=f"kb/{path.name}", title=title, content_type="text/markdown",
                                              content=text.encode(), metadata={"source": "kb-folder"}),
                metadata=outgoing_metadata(tenant_id=tenant_id, session_id="tenant-setup"), timeout=timeout_s,
            )
            outcome = rag_pb2.IngestOutcome.Name(resp.outcome).removeprefix("INGEST_OUTCOME_").lower() \
                if resp.outcome in rag_pb2.IngestOutcome.values() else f"unknown_{resp.outcome}"
            out.append(Ingested(resp.document_id, resp.chunk_count, outcome,
                                f"{resp.embedder.provider}/{resp.embedder.model}", resp.embedder.offline,
                                resp.cost_usd))
    return out
