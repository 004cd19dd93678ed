"""Tools through the router: definitions passed to Claude (tool_use, streamed input_json_delta) and Gemini
(function declarations, function_call parts), complete calls streamed out as RespondResponse.tool_call, tool
results in the history converted to each provider's format, per-reply instructions. The emulators speak the
providers' wire formats; the first tests drive them with the official SDKs directly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import grpc
import pytest
from google import genai
from google.genai import types

from frugal.api.router.v1 import router_pb2
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply
from frugal.devkit.routing.probes import PREMIUM_TURN

MD = (("x-tenant-id", "acme"), ("x-session-id", "s1"))
EASY = "Where is my order A-17?"
HARD = PREMIUM_TURN
SCHEMA: dict[str, object] = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
TOOL = router_pb2.ToolDefinition(name="lookup_order", description="Look an order up by id.",
                                 parameters_json=json.dumps(SCHEMA))


# ------------------------------------------------------------------------------ emulators via the SDKs
async def test_anthropic_emulator_streams_tool_use_the_sdk_assembles(claude_emu: AnthropicEmulator) -> None:
    client = anthropic.AsyncAnthropic(api_key="k", base_url=claude_emu.base_url, max_retries=0)
    claude_emu.script(AnthropicReply(text="Let me check.", tool_calls=(("lookup_order", {"order_id": "A-17"}),)))
    async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                                      tools=[{"name": "lookup_order", "input_schema": SCHEMA}],
                                      messages=[{"role": "user", "content": EASY}]) as stream:
        final = await stream.get_final_message()
    await client.close()
    assert final.stop_reason == "tool_use"
    text, use = final.content
    assert text.type == "text" and text.text == "Let me check."
    assert use.type == "tool_use" and use.name == "lookup_order" and use.input == {"order_id": "A-17"}
    assert claude_emu.requests[-1].tools[0]["name"] == "lookup_order"


async def test_anthropic_emulator_refuses_a_tool_result_without_its_tool_use(claude_emu: AnthropicEmulator) -> None:
    client = anthropic.AsyncAnthropic(api_key="k", base_url=claude_emu.base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "42"}]}])
    await client.close()


async def test_gemini_emulator_streams_function_calls_the_sdk_parses(gemini_emu: GeminiEmulator) -> None:
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=gemini_emu.base_url))
    gemini_emu.script(GeminiReply(function_calls=(("lookup_order", {"order_id": "A-17"}),)))
    calls = []
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
        name="lookup_order", parameters_json_schema=SCHEMA)])])
    async for chunk in await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents=EASY,
                                                                      config=config):
        calls.extend(chunk.function_calls or [])
    await client.aio.aclose()
    assert [(c.name, c.args) for c in calls] == [("lookup_order", {"order_id": "A-17"})]
    assert gemini_emu.requests[-1].function_declarations[0]["name"] == "lookup_order"


# ------------------------------------------------------------------------------ through the router
@dataclass
class Streamed:
    deltas: list[str] = field(default_factory=list)
    calls: list[router_pb2.ToolCall] = field(default_factory=list)
    completed: router_pb2.RespondCompleted | None = None
    order: list[str] = field(default_factory=list)


async def respond(router: Any, text: str, history: Any = (), **kwargs: Any) -> Streamed:
    out = Streamed()
    req = router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text, history=list(history)), skip_rag=True,
                                    skip_vision=True, **kwargs)
    async for msg in router.stub.Respond(req, metadata=MD, timeout=10):
        kind = msg.WhichOneof("payload")
        out.order.append(kind)
        if kind == "delta":
            out.deltas.append(msg.delta.text)
        elif kind == "tool_call":
            out.calls.append(msg.tool_call)
        elif kind == "completed":
            out.completed = msg.completed
    return out


def keys(gemini: GeminiEmulator, claude: AnthropicEmulator) -> dict[str, Any]:
    return {"gemini_api_key": "g", "gemini_base_url": gemini.base_url, "anthropic_api_key": "a",
            "anthropic_base_url": claude.base_url}


def after_call(call: router_pb2.ToolCall, question: str, result: str) -> list[router_pb2.ChatMessage]:
    return [router_pb2.ChatMessage(role=router_pb2.ROLE_USER, content=question),
            router_pb2.ChatMessage(role=router_pb2.ROLE_ASSISTANT, content="", tool_calls=[call]),
            router_pb2.ChatMessage(role=router_pb2.ROLE_TOOL, content=result, tool_call_id=call.id)]


async def test_claude_tool_call_round_trip(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(tool_calls=(("lookup_order", {"order_id": "A-17", "note": "x" * 30}),)))
    got = await respond(router, HARD, tools=[TOOL], instructions="Mention the order id.")
    assert got.order[0] == "started" and got.order[-1] == "completed" and "tool_call" in got.order
    (call,) = got.calls
    assert call.name == "lookup_order" and call.id.startswith("toolu_")
    assert json.loads(call.arguments_json) == {"order_id": "A-17", "note": "x" * 30}  # from several json deltas
    req = claude_emu.requests[-1]
    assert req.tools == ({"name": "lookup_order", "description": "Look an order up by id.", "input_schema": SCHEMA},)
    assert "For this reply: Mention the order id." in req.system
    # The result goes back as a ROLE_TOOL message; the turn text may be empty then.
    claude_emu.script(AnthropicReply(text="Order A-17 has shipped."))
    got = await respond(router, "", history=after_call(call, HARD, '{"status": "shipped"}'), tools=[TOOL])
    assert "".join(got.deltas) == "Order A-17 has shipped."
    req = claude_emu.requests[-1]
    assert req.tool_uses[0]["id"] == call.id and req.tool_uses[0]["input"]["order_id"] == "A-17"
    assert req.tool_results[0]["tool_use_id"] == call.id and "shipped" in str(req.tool_results[0]["content"])
    assert "For this reply" not in req.system  # instructions were for the earlier reply only


async def test_gemini_tool_call_round_trip_and_a_claude_call_answered_by_gemini(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    gemini_emu.script(GeminiReply(function_calls=(("lookup_order", {"order_id": "A-17"}),)))
    got = await respond(router, EASY, tools=[TOOL])
    (call,) = got.calls
    assert call.name == "lookup_order" and json.loads(call.arguments_json) == {"order_id": "A-17"} and call.id
    decl = gemini_emu.requests[-1].function_declarations[0]
    assert decl["name"] == "lookup_order" and SCHEMA in (
        decl.get("parametersJsonSchema"), decl.get("parameters_json_schema"))
    gemini_emu.script(GeminiReply(text="It shipped yesterday."))
    got = await respond(router, "", history=after_call(call, EASY, "shipped"), tools=[TOOL])
    assert "".join(got.deltas) == "It shipped yesterday."
    req = gemini_emu.requests[-1]
    assert req.function_calls[0]["name"] == "lookup_order"
    assert req.function_responses[0]["name"] == "lookup_order"
    assert req.function_responses[0]["response"] == {"output": "shipped"}
    # A call Claude made (toolu_ id) answered on a Gemini tier: converted, the name resolved from the history.
    foreign = router_pb2.ToolCall(id="toolu_abc", name="lookup_order", arguments_json='{"order_id": "B-2"}')
    history = after_call(foreign, EASY, "not found")
    history[-1].tool_error = True
    got = await respond(router, "", history=history, tools=[TOOL])
    assert got.completed is not None and got.completed.provider.provider == "google"
    assert gemini_emu.requests[-1].function_responses[0]["response"] == {"error": "not found"}


async def test_trimming_that_drops_a_tool_call_drops_its_result_too(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    """A long history trimmed to the per-turn cap: the oldest assistant message carries a tool call too large
    to keep, its (small) result and the exchange after it fit. The result goes with its call (a tool_result
    without its tool_use is a 400 from Claude; the Claude adapter's last-resort text rendering must not be
    what saves it), it is not billed as input, and the note counts it among the dropped."""
    router = await start_router(**keys(gemini_emu, claude_emu), max_turn_input_tokens=3000,
                                default_tokens_per_minute=10_000_000)
    call = router_pb2.ToolCall(id="toolu_old", name="lookup_order",
                               arguments_json=json.dumps({"order_id": "A-17", "note": "x" * 20_000}))
    history = [*after_call(call, "Where is A-17?", '{"status": "shipped"}'),
               router_pb2.ChatMessage(role=router_pb2.ROLE_USER, content="[follow-up] And B-2?"),
               router_pb2.ChatMessage(role=router_pb2.ROLE_ASSISTANT, content="[reply] B-2 is packed.")]
    claude_emu.script(AnthropicReply(text="Anything else?"))
    got = await respond(router, HARD, history=history, tools=[TOOL])
    c = got.completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6", c
    req = claude_emu.requests[-1]
    assert req.tool_uses == () and req.tool_results == ()
    assert req.messages[-1] == ("user", HARD) and [t for _, t in req.messages[:2]] == [
        "[follow-up] And B-2?", "[reply] B-2 is packed."]
    assert any(d.startswith("history trimmed: 3 oldest messages dropped") for d in c.degraded), c.degraded


@pytest.mark.parametrize(("tools", "needle"), [
    ([router_pb2.ToolDefinition(name="bad name")], "tool name"),
    ([router_pb2.ToolDefinition(name="t", parameters_json="{nope")], "not JSON"),
    ([router_pb2.ToolDefinition(name="t", parameters_json='{"type": "string"}')], "JSON Schema object"),
    ([router_pb2.ToolDefinition(name="t"), router_pb2.ToolDefinition(name="t")], "unique"),
])
async def test_bad_tool_definitions_are_invalid_argument(start_router: Any, tools: Any, needle: str) -> None:
    router = await start_router()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, "hello", tools=tools)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (info.value.details() or "")


async def test_a_tool_result_without_its_call_id_is_invalid(start_router: Any) -> None:
    router = await start_router()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, "", history=[router_pb2.ChatMessage(role=router_pb2.ROLE_TOOL, content="x")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tool_call_id" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, "")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in (info.value.details() or "")
