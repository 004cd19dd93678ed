"""The transport floor of a grpc.aio mesh: a bare `RouterService.Respond` that only relays the provider's stream.

    python bench/overhead/relay.py --anthropic-url URL     # prints "ready 127.0.0.1:PORT", serves until killed

It answers the router's own RPC with the router's own messages (`started`, one `delta` per text event,
`completed` with the usage) from the same SDK client on the same transport (anthropic's aiohttp one, made once),
and does nothing else: no tenancy interceptor, no admission, no decision, no context, no cost record. One
process, one event loop, the router's server options. Whatever the mesh adds beyond this relay is the router's
own work; what the relay adds over the direct call is what gRPC between two Python processes costs on this
machine, which no router written on grpc.aio can go below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.grpc_server import server_options

MODEL = "claude-sonnet-4-6"


class Relay(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client
        self.info = common_pb2.ProviderInfo(provider="anthropic", model=MODEL)

    async def Route(  # noqa: N802 - the generated servicer's name
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RouteResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the relay only relays Respond")

    async def Respond(  # noqa: N802 - the generated servicer's name
        self, request: router_pb2.RespondRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.RespondResponse]:
        yield router_pb2.RespondResponse(started=router_pb2.RespondStarted(), provider=self.info)
        async with self.client.messages.stream(
            model=MODEL, max_tokens=request.max_output_tokens or 64,
            messages=[{"role": "user", "content": request.turn.text}],
        ) as stream:
            async for text in stream.text_stream:
                yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=text), provider=self.info)
            final = await stream.get_final_message()
        usage = common_pb2.Usage(input_tokens=final.usage.input_tokens, output_tokens=final.usage.output_tokens)
        yield router_pb2.RespondResponse(completed=router_pb2.RespondCompleted(provider=self.info, usage=usage),
                                         provider=self.info)


async def serve(anthropic_url: str) -> None:
    client = anthropic.AsyncAnthropic(api_key="bench-key", base_url=anthropic_url, max_retries=0, timeout=30.0,
                                      http_client=anthropic.DefaultAioHttpClient(timeout=30.0))
    server = grpc.aio.server(options=server_options(4 * 1024 * 1024))
    router_pb2_grpc.add_RouterServiceServicer_to_server(Relay(client), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"ready 127.0.0.1:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)
        await client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anthropic-url", required=True)
    asyncio.run(serve(p.parse_args().anthropic_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
