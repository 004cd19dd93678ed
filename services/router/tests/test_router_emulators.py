"""The provider emulators (frugal.devkit.emulators.gemini / .anthropic) driven through the official SDKs.

Each test talks to a real aiohttp server on a loopback socket through `google-genai` or `anthropic` with the
SDK's base-URL option, so what passes here is the wire format those SDKs really parse.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import anthropic
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import IMAGE_TOKENS, GeminiEmulator, GeminiReply

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest_asyncio.fixture
async def gemini() -> AsyncIterator[tuple[GeminiEmulator, genai.Client]]:
    async with GeminiEmulator() as emu:
        client = genai.Client(
            api_key="test-key",
            http_options=types.HttpOptions(
                base_url=emu.base_url, retry_options=types.HttpRetryOptions(attempts=1), timeout=5_000
            ),
        )
        try:
            yield emu, client
        finally:
            await client.aio.aclose()


@pytest_asyncio.fixture
async def claude() -> AsyncIterator[tuple[AnthropicEmulator, anthropic.AsyncAnthropic]]:
    async with AnthropicEmulator() as emu:
        client = anthropic.AsyncAnthropic(api_key="test-key", base_url=emu.base_url, max_retries=0, timeout=5.0)
        try:
            yield emu, client
        finally:
            await client.close()


# ---------------------------------------------------------------------------------------------- Gemini
async def test_gemini_generate_content_reports_usage_and_records_request(
    gemini: tuple[GeminiEmulator, genai.Client],
) -> None:
    emu, client = gemini
    emu.script(GeminiReply(text="Paris is the capital of France."))
    resp = await client.aio.models.generate_content(
        model="gemini-2.5-flash-lite",
        contents="What is the capital of France?",
        config=types.GenerateContentConfig(system_instruction="Answer briefly.", max_output_tokens=64),
    )
    assert resp.text == "Paris is the capital of France."
    usage = resp.usage_metadata
    assert usage is not None
    # ceil(30/4) for the question + ceil(15/4) for the system instruction; ceil(31/4) for the answer.
    assert usage.prompt_token_count == 8 + 4
    assert usage.candidates_token_count == 8
    assert usage.total_token_count == 20
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    req = emu.requests[-1]
    assert req.model == "gemini-2.5-flash-lite" and req.action == "generateContent" and not req.stream
    assert req.api_key == "test-key"
    assert req.system_instruction == "Answer briefly."
    assert req.generation_config["maxOutputTokens"] == 64


async def test_gemini_stream_is_sse_with_usage_on_the_last_chunk(gemini: tuple[GeminiEmulator, genai.Client]) -> None:
    emu, client = gemini
    emu.script(GeminiReply(chunks=("The answer ", "is ", "forty-two."), thoughts_tokens=7))
    texts: list[str] = []
    last = None
    async for chunk in await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="Why?"):
        texts.append(chunk.text or "")
        last = chunk
    assert texts == ["The answer ", "is ", "forty-two."]
    assert last is not None and last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == 6  # ceil(25 / 4)
    assert last.usage_metadata.thoughts_token_count == 7
    assert last.usage_metadata.prompt_token_count == 1
    assert emu.requests[-1].stream and emu.requests[-1].query.get("alt") == "sse"


async def test_gemini_image_parts_are_decoded_and_counted(gemini: tuple[GeminiEmulator, genai.Client]) -> None:
    emu, client = gemini
    image = types.Part.from_bytes(data=PNG_1X1, mime_type="image/png")
    content = types.Content(role="user", parts=[image, types.Part.from_text(text="Describe the screen.")])
    resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents=content)
    req = emu.requests[-1]
    assert len(req.images) == 1 and req.images[0].data == PNG_1X1 and req.images[0].mime_type == "image/png"
    assert resp.usage_metadata is not None
    assert resp.usage_metadata.prompt_token_count == IMAGE_TOKENS + 5
    modalities = {d.modality: d.token_count for d in resp.usage_metadata.prompt_tokens_details or []}
    assert modalities[types.MediaModality.IMAGE] == IMAGE_TOKENS
    # The default reply describes the image by type, size and digest: different frames, different text.
    assert "image/png" in (resp.text or "") and req.images[0].sha256[:12] in (resp.text or "")


@pytest.mark.parametrize(("status", "exc", "status_name"), [
    (429, genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
    (500, genai_errors.ServerError, "INTERNAL"),
    (503, genai_errors.ServerError, "UNAVAILABLE"),
])
async def test_gemini_error_injection_uses_googles_error_json(
    gemini: tuple[GeminiEmulator, genai.Client], status: int, exc: type[Exception], status_name: str
) -> None:
    emu, client = gemini
    emu.fail_next(status)
    with pytest.raises(exc) as info:
        async for _ in await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            pass
    err = info.value
    assert isinstance(err, genai_errors.APIError)
    assert err.code == status and err.status == status_name
    if status == 429:
        assert "RetryInfo" in str(err.details)
    # The script is consumed: the next call succeeds.
    resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert resp.text


async def test_gemini_slow_response_hits_the_sdk_timeout(gemini: tuple[GeminiEmulator, genai.Client]) -> None:
    emu, client = gemini
    emu.script(GeminiReply(latency_s=1.0))
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hi", config=types.GenerateContentConfig(
                http_options=types.HttpOptions(timeout=200, retry_options=types.HttpRetryOptions(attempts=1))
            ),
        )


async def test_gemini_dropped_stream_raises_after_partial_output(gemini: tuple[GeminiEmulator, genai.Client]) -> None:
    emu, client = gemini
    emu.script(GeminiReply(chunks=("one ", "two ", "three ", "four"), drop_after_chunks=2))
    got: list[str] = []
    with pytest.raises(Exception) as info:
        async for chunk in await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="count"):
            got.append(chunk.text or "")
    assert got == ["one ", "two "]
    assert not isinstance(info.value, AssertionError)


# ---------------------------------------------------------------------------------------------- Anthropic
async def test_anthropic_message_has_usage(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    emu.script(AnthropicReply(text="Use a B-tree index here."))
    msg = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, system="Be precise.",
        messages=[{"role": "user", "content": "Which index should I use?"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Use a B-tree index here."
    assert msg.usage.input_tokens == 3 + 7 and msg.usage.output_tokens == 6
    assert msg.stop_reason == "end_turn"
    req = emu.requests[-1]
    assert req.model == "claude-sonnet-4-6" and req.system == "Be precise." and req.max_tokens == 200
    assert req.api_key == "test-key" and "anthropic-version" in req.headers


async def test_anthropic_stream_events_and_usage(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    emu.script(AnthropicReply(chunks=("Step one. ", "Step two.")))
    types_seen: list[str] = []
    deltas: list[str] = []
    input_tokens = output_tokens = -1
    stream = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, stream=True,
        messages=[{"role": "user", "content": "Plan it"}, {"role": "assistant", "content": "Sure."},
                  {"role": "user", "content": "Go on"}],
    )
    async for event in stream:
        types_seen.append(event.type)
        if event.type == "message_start":
            input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            deltas.append(event.delta.text)
        elif event.type == "message_delta":
            output_tokens = event.usage.output_tokens
    assert deltas == ["Step one. ", "Step two."]
    assert types_seen[0] == "message_start" and types_seen[-1] == "message_stop" and "message_delta" in types_seen
    assert input_tokens == 2 + 2 + 2 and output_tokens == 5
    assert emu.requests[-1].messages == (("user", "Plan it"), ("assistant", "Sure."), ("user", "Go on"))


async def test_anthropic_max_tokens_cuts_the_reply(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    emu.script(AnthropicReply(text="x" * 100))
    msg = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "long"}]
    )
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5


@pytest.mark.parametrize(("status", "exc"), [
    (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError),
    (529, anthropic.OverloadedError),
])
async def test_anthropic_error_injection(
    claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic], status: int, exc: type[Exception]
) -> None:
    emu, client = claude
    emu.fail_next(status)
    with pytest.raises(exc) as info:
        await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    err = info.value
    assert isinstance(err, anthropic.APIStatusError) and err.status_code == status
    assert isinstance(err.body, dict) and err.body["type"] == "error"
    if status == 429:
        assert err.response.headers.get("retry-after") is not None


async def test_anthropic_error_event_mid_stream(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    emu.script(AnthropicReply(chunks=("a", "b", "c", "d"), error_after_chunks=2))
    deltas: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            async for text in stream.text_stream:
                deltas.append(text)
    assert deltas == ["a", "b"]
    assert "overloaded_error" in str(info.value)


async def test_anthropic_slow_response_times_out(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    emu.script(AnthropicReply(latency_s=1.0))
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.2).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


async def test_anthropic_image_blocks_are_recorded(claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic]) -> None:
    emu, client = claude
    msg = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=50,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(PNG_1X1).decode()}},
            {"type": "text", "text": "What is this?"},
        ]}],
    )
    assert emu.requests[-1].images[0].data == PNG_1X1
    assert msg.usage.input_tokens == 1600 + 4


async def test_anthropic_rejects_a_malformed_request_like_the_api(
    claude: tuple[AnthropicEmulator, anthropic.AsyncAnthropic],
) -> None:
    _, client = claude
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[])
