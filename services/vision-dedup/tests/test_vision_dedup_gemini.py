"""The Gemini path through the real google-genai SDK against the local Gemini emulator (frugal.devkit.emulators)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import cv2
import numpy as np
import redis.asyncio as aioredis

from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
from frugal.common.pricing import default_catalog
from frugal.common.usage import UsageAmounts
from frugal.devkit.emulators.gemini import IMAGE_TOKENS, GeminiEmulator, GeminiReply, count_text_tokens
from frugal.devkit.vision import corpus
from frugal.devkit.vision.evaluation import i420_frame

KEPT = vision_pb2.VERDICT_KIND_KEPT


def md(tenant: str = "org_gem", session: str = "sess-g") -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", session))


async def requests_from(items: Sequence[Any], pause_s: float = 0.0) -> AsyncIterator[Any]:
    for item in items:
        if pause_s:
            await asyncio.sleep(pause_s)
        yield item


async def collect(call: Any) -> tuple[list[Any], list[Any]]:
    verdicts, analyses = [], []
    async for resp in call:
        if resp.HasField("verdict"):
            verdicts.append(resp.verdict)
        else:
            analyses.append(resp.analysis)
    return verdicts, analyses


def screens(n: int, w: int = 1280, h: int = 720) -> list[Any]:
    """n distinct screens, each sent twice 200 ms apart: each is kept once, on its second frame."""
    out = []
    for k in range(n):
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[:] = (40, 60, 90) if k % 2 else (220, 210, 200)  # consecutive screens differ everywhere
        x = (k * w // 9) % (w // 2)
        img[h // 4 : h // 2, x : x + w // 4] = (200, 40, 40)
        for rep in range(2):
            f = corpus.CorpusFrame("screens", 2 * k + rep, 1000 * k + 200 * rep, img, False)
            out.append(vision_pb2.StreamFramesRequest(frame=i420_frame(f)))
    return out


async def events(redis_url: str) -> list[CostEvent]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries: list[tuple[Any, dict[Any, Any]]] = await r.xrange(COST_EVENTS_STREAM)  # type: ignore[assignment]
        return [CostEvent.from_stream_fields(f) for _, f in entries]
    finally:
        await r.aclose()


async def test_gemini_analysis_usage_and_cost_event(start_server: Any, redis_client: aioredis.Redis,
                                                    redis_url: str) -> None:
    async with GeminiEmulator() as emu:
        emu.script(GeminiReply(text="A slide titled Quarterly review with three bullet points."),
                   GeminiReply(text="The next slide: a revenue chart.", thoughts_tokens=7))
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url)
        verdicts, analyses = await collect(stub.StreamFrames(requests_from(screens(2), pause_s=0.05),
                                                             metadata=md()))
    assert [v.sequence for v in verdicts if v.kind == KEPT] == [0, 3]
    assert [a.sequence for a in analyses] == [0, 3]
    catalog = default_catalog()
    model = catalog.tier_model("standard")
    assert len(emu.requests) == 2
    for req, a in zip(emu.requests, analyses, strict=True):
        assert req.model == model and req.api_key == "test-key"
        assert len(req.images) == 1 and req.images[0].mime_type == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(req.images[0].data, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and max(img.shape[:2]) <= 768 and img.shape[1] == 768  # 1280x720 scaled to fit
        assert "1280x720" in req.prompt_text and req.system_instruction
        expected_in = IMAGE_TOKENS + sum(count_text_tokens(t) for t in req.texts) + count_text_tokens(
            req.system_instruction)
        assert a.usage.input_tokens == expected_in and not a.usage.estimated and a.usage.images == 1
        assert not a.provider.offline and a.provider.provider == "google" and a.provider.model == model
    assert analyses[0].description.startswith("A slide titled")
    assert analyses[1].usage.output_tokens == count_text_tokens("The next slide: a revenue chart.") + 7
    # the second prompt carries where the screen changed and the previous description
    assert "changed" in emu.requests[1].prompt_text and "Quarterly review" in emu.requests[1].prompt_text

    evs = await events(redis_url)
    assert len(evs) == 2
    for e, a in zip(evs, analyses, strict=True):
        usage = UsageAmounts.from_proto(a.usage)
        assert e.usage == usage and not e.offline and e.tier == "standard" and e.provider == "google"
        assert e.cost_usd == a.cost_usd == catalog.cost(model, usage) > 0
    assert [e.covered_seconds for e in evs] == [0.0, 1.2]
    assert [e.frames_considered for e in evs] == [1, 3]


async def test_slow_model_coalesces_to_newest_frame(start_server: Any, redis_client: aioredis.Redis,
                                                    redis_url: str) -> None:
    async with GeminiEmulator(latency_s=0.6) as emu:
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url, vision_queue_size=1)
        reqs = screens(8, 320, 180)
        verdicts, analyses = await collect(stub.StreamFrames(requests_from(reqs, pause_s=0.03), metadata=md()))
    kept = [v.sequence for v in verdicts if v.kind == KEPT]
    assert len(kept) == 8
    # the model took 0.6 s per frame while the stream produced a kept frame every ~60 ms
    assert 2 <= len(analyses) < len(kept)
    assert len(emu.requests) == len(analyses)
    assert analyses[0].sequence == kept[0] and analyses[-1].sequence == kept[-1]
    assert sum(a.coalesced_frames for a in analyses) + len(analyses) == len(kept)
    assert any(a.coalesced_frames > 0 for a in analyses)
    evs = await events(redis_url)
    assert len(evs) == len(analyses)
    assert [e.attributes["coalesced_frames"] for e in evs] == [str(a.coalesced_frames) for a in analyses]
    # coverage: one event per call, together they stand for the whole stream up to the last analysed frame
    assert sum(e.frames_considered or 0 for e in evs) == len(verdicts)
    assert sum(e.covered_seconds or 0 for e in evs) == analyses[-1].timestamp_ms / 1000


async def test_model_error_falls_back_to_labelled_offline_analysis(start_server: Any, redis_client: aioredis.Redis,
                                                                    redis_url: str) -> None:
    async with GeminiEmulator() as emu:
        emu.fail_next(503)
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url)
        _, analyses = await collect(stub.StreamFrames(requests_from(screens(1, 320, 180)), metadata=md()))
    assert len(analyses) == 1
    a = analyses[0]
    assert a.provider.offline and a.cost_usd == 0 and a.usage.estimated
    assert "gemini-2.5-flash call failed" in a.description and "not read" in a.description
    (e,) = await events(redis_url)
    assert e.offline and e.attributes["fallback_from"] == "gemini-2.5-flash" and "503" in e.attributes["error"]
