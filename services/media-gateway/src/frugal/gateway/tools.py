"""Built-in tools the agent offers the model: search the tenant's knowledge base on demand.

The router already attaches retrieved context to every turn; this tool lets the model look something up with
its own query (e.g. a follow-up about a term the user used three turns ago), scoped to the session's tenant.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
from livekit.agents import llm
from livekit.agents.llm import function_tool

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.gateway import metrics
from frugal.gateway.router_llm import turn_metadata

log = logging.getLogger(__name__)

KB_TOOL_NAME = "search_knowledge_base"
# Characters of each passage read back to the model: enough for an answer, short enough to stay cheap.
PASSAGE_CHARS = 600


def format_passages(resp: rag_pb2.RetrieveResponse) -> str:
    if not resp.chunks:
        return "No passage of the knowledge base matches."
    lines = []
    for i, chunk in enumerate(resp.chunks, start=1):
        text = " ".join(chunk.content.split())[:PASSAGE_CHARS]
        lines.append(f"[{i}] {chunk.title or chunk.document_id}: {text}")
    return "\n".join(lines)


def knowledge_base_tool(
    stub: rag_pb2_grpc.RagServiceAsyncStub, *, tenant_id: str, session_id: str, top_k: int = 3,
    timeout_s: float = 5.0,
) -> llm.FunctionTool[Any, Any]:
    """A function tool bound to one tenant: the model cannot choose whose knowledge base it reads."""

    async def search_knowledge_base(query: str) -> str:
        """Search the workspace's knowledge base (product docs, pricing, policies) and return the best passages.

        Args:
            query: What to look up, as a short question or keywords.
        """
        query = query.strip()
        if not query:
            raise llm.ToolError("the query is empty")
        request_id = f"tool-{uuid.uuid4().hex}"
        try:
            resp = await stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=top_k),
                                       metadata=turn_metadata(tenant_id, session_id, request_id), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            metrics.TOOL_CALLS.labels(tool=KB_TOOL_NAME, outcome=err.code().name.lower()).inc()
            log.warning("knowledge base search failed (%s: %s)", err.code().name, err.details(),
                        extra={"tenant_id": tenant_id, "session_id": session_id, "request_id": request_id})
            # ToolError: the model is told the tool failed (and can say so); the session goes on.
            raise llm.ToolError(f"the knowledge base is unavailable ({err.code().name})") from None
        metrics.TOOL_CALLS.labels(tool=KB_TOOL_NAME, outcome="ok").inc()
        return format_passages(resp)

    tool: llm.FunctionTool[Any, Any] = function_tool(search_knowledge_base, name=KB_TOOL_NAME)
    return tool
