"""The Gemini path through the real google-genai SDK against the local Gemini emulator (frugal.devkit.emulators)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis.asyncio as aioredis

from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
from frugal.common.pricing import default_catalog
from frugal.common.usage import UsageAmounts
from frugal.devkit.cost_spool import spooled_events
from frugal.devkit.devstack import free_port
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
    assert a.provider.offline and a.usage.estimated
    assert "gemini-2.5-flash call failed" in a.description and "not read" in a.description
    (e,) = await events(redis_url)
    assert e.offline and e.attributes["fallback_from"] == "gemini-2.5-flash" and "503" in e.attributes["error"]
    # The one offline rule: list price of the model it stands in for, on estimated usage, labelled.
    assert e.attributes["priced_as"] == "gemini-2.5-flash" and e.usage.estimated
    assert e.cost_usd > 0 and e.cost_usd == pytest.approx(a.cost_usd)
    assert e.cost_usd == pytest.approx(default_catalog().cost("gemini-2.5-flash", e.usage))


async def test_a_call_that_times_out_on_our_side_is_billed_as_an_estimate(
    start_server: Any, redis_client: aioredis.Redis, redis_url: str
) -> None:
    """The request reached Gemini, which bills it whether or not we wait for the answer."""
    async with GeminiEmulator(latency_s=3.0) as emu:
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url,
                                     vision_timeout_seconds=0.5)
        _, analyses = await collect(stub.StreamFrames(requests_from(screens(1, 320, 180)), metadata=md()))
    assert len(emu.requests) == 1
    (a,) = analyses
    assert a.provider.offline and "call failed" in a.description
    evs = await events(redis_url)
    attempt = [e for e in evs if e.attributes.get("outcome") == "timeout"]
    fallback = [e for e in evs if e.offline]
    assert len(attempt) == 1 and len(fallback) == 1 and len(evs) == 2
    e = attempt[0]
    model = default_catalog().tier_model("standard")
    assert e.model == model and not e.offline and e.usage.estimated and e.usage.images == 1
    assert e.cost_usd == default_catalog().cost(model, e.usage) > 0
    assert "estimated" in e.attributes["usage_basis"]
    assert e.event_id != fallback[0].event_id


async def test_the_circuit_breaker_stops_calling_a_failing_model(start_server: Any, redis_client: aioredis.Redis,
                                                                 redis_url: str) -> None:
    async with GeminiEmulator() as emu:
        emu.fail_next(503, times=10)
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url,
                                     vision_breaker_failures=2, vision_breaker_cooldown_s=600)
        _, analyses = await collect(stub.StreamFrames(requests_from(screens(5, 320, 180), pause_s=0.1),
                                                      metadata=md()))
    assert len(analyses) == 5
    assert len(emu.requests) == 2  # two failures open the circuit: the model is not called again
    assert all(a.provider.offline for a in analyses)
    assert sum("circuit open" in a.description for a in analyses) == 3


async def test_after_coalescing_the_prompt_says_what_changed_since_the_analysed_frame(
    start_server: Any, redis_client: aioredis.Redis
) -> None:
    """Editor -> terminal -> editor again while the model is busy with the first: the model last saw the
    editor, so the prompt must not describe the terminal's replacement as a big change."""
    async with GeminiEmulator(latency_s=0.8) as emu:
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url, vision_queue_size=1)
        s = screens(2, 320, 180)
        # screens 0, 1, 0 again: the third differs from the second everywhere, from the first nowhere
        reqs = s + screens(1, 320, 180)
        for i, r in enumerate(reqs):
            r.frame.sequence, r.frame.timestamp_ms = i, 1000 * (i // 2) + 200 * (i % 2) + 1
        _, analyses = await collect(stub.StreamFrames(requests_from(reqs, pause_s=0.05), metadata=md()))
    assert [a.coalesced_frames for a in analyses] == [0, 1]
    last_prompt = emu.requests[-1].prompt_text
    assert "previous analysed frame" in last_prompt and "Nothing visible changed" in last_prompt
    assert "1 kept frame(s) in between were not analysed" in last_prompt


async def test_no_tenant_holds_more_than_its_share_of_model_slots(redis_client: aioredis.Redis) -> None:
    """4 slots, share 0.5: a tenant with many frames waiting holds at most 2; another tenant still gets in."""
    from frugal.common.cost_events import CostEventProducer
    from frugal.vision.analysis import AnalysisJob, Analyzer, OfflineVisionProvider, ProviderResult
    from frugal.vision.context_store import ContextStore

    gate = asyncio.Event()
    in_flight: dict[str, int] = {}
    peak: dict[str, int] = {}

    class Gated(OfflineVisionProvider):
        async def describe(self, job: AnalysisJob, previous: str | None, *, note: str | None = None
                           ) -> ProviderResult:
            tenant = job.track_id
            in_flight[tenant] = in_flight.get(tenant, 0) + 1
            peak[tenant] = max(peak.get(tenant, 0), in_flight[tenant])
            await gate.wait()
            in_flight[tenant] -= 1
            return await super().describe(job, previous, note=note)

    producer = CostEventProducer(redis_client)
    analyzer = Analyzer(Gated(), default_catalog(), producer, ContextStore(redis_client), max_concurrency=4,
                        tenant_share=0.5)
    frame = screens(1, 64, 36)[0].frame

    def job(tenant: str, seq: int) -> AnalysisJob:
        return AnalysisJob(frame=frame, track_id=tenant, sequence=seq, timestamp_ms=seq, width=64, height=36,
                           reason="changed", changed_area=1.0, bbox=(0, 0, 64, 36), frames_seen=1, track_start_ms=0)

    tasks = [asyncio.create_task(analyzer.analyse(job(t, i), tenant_id=t, session_id="s", request_id=None,
                                                  previous=None, covered_seconds=1, frames_considered=1))
             for i, t in enumerate(["org_busy"] * 5 + ["org_calm"])]
    for _ in range(100):
        if in_flight.get("org_calm"):
            break
        await asyncio.sleep(0.01)
    assert peak == {"org_busy": 2, "org_calm": 1}  # the calm tenant got a slot while the busy one waits
    assert len(analyzer._per_tenant) == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert peak["org_busy"] == 2
    # The per-tenant table holds only tenants with work in flight (a long-lived service meets many tenants).
    assert len(analyzer._per_tenant) == 0
    await producer.aclose()


async def test_no_gemini_call_starts_while_its_cost_could_not_be_recorded(
    start_server: Any, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """The cost-event Redis is down and the spool is full at 4 KiB: kept frames get the labelled offline
    description instead of a paid call, and every call that was made is on disk."""
    spool = tmp_path / "spool"
    async with GeminiEmulator() as emu:
        _, stub = await start_server(gemini_api_key="test-key", gemini_base_url=emu.base_url,
                                     cost_events_redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                     cost_spool_dir=str(spool), cost_spool_max_bytes=4096)
        _, analyses = await collect(stub.StreamFrames(requests_from(screens(14, 320, 180), pause_s=0.1),
                                                      metadata=md()))
    assert len(analyses) == 14
    paid = [a for a in analyses if not a.provider.offline]
    refused = [a for a in analyses if "not called" in a.description and "spool full" in a.description]
    assert 1 <= len(paid) == len(emu.requests) < 14  # the first calls are made, then none
    assert len(refused) == 14 - len(paid) and all(a.provider.offline for a in refused)
    assert analyses.index(refused[0]) == len(paid)  # once refused, the rest stay refused (nothing drained it)
    spooled = await spooled_events(spool, at_least=14)
    assert len([e for e in spooled if not e.offline]) == len(emu.requests)  # every paid call is billed
    assert len(spooled) == 14  # and every analysis, paid or not, has its event
