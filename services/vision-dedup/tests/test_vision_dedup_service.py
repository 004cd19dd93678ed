"""StreamFrames and GetContext over real gRPC, with the offline provider and the real Redis fixture."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
from frugal.common.pricing import default_catalog
from frugal.devkit.vision import corpus
from frugal.devkit.vision.evaluation import i420_frame

KEPT, SKIPPED, ERROR = vision_pb2.VERDICT_KIND_KEPT, vision_pb2.VERDICT_KIND_SKIPPED, vision_pb2.VERDICT_KIND_ERROR


def md(tenant: str = "org_test", session: str = "sess-1") -> tuple[tuple[str, str], ...]:
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


def slide_requests(seconds: float = 5.0) -> list[Any]:
    return [vision_pb2.StreamFramesRequest(frame=i420_frame(f))
            for f in corpus.generate("slides", 320, 180, seconds, seed=3)]


def solid_pair_requests(n: int, *, w: int = 64, h: int = 36, start_seq: int = 0) -> list[Any]:
    """n distinct screens, each sent twice 200 ms apart (so each is kept once the screen is still)."""
    out = []
    for k in range(n):
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[:] = (40, 60, 90) if k % 2 else (220, 210, 200)  # consecutive screens differ everywhere
        x = (k * w // 9) % (w // 2)
        img[h // 4 : h // 2, x : x + w // 4] = (200, 40, 40)
        for rep in range(2):
            seq = start_seq + 2 * k + rep
            f = corpus.CorpusFrame("solid", seq, 1000 * k + 200 * rep, img, False)
            out.append(vision_pb2.StreamFramesRequest(frame=i420_frame(f)))
    return out


async def cost_events(redis_url: str) -> list[CostEvent]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries: list[tuple[Any, dict[Any, Any]]] = await r.xrange(COST_EVENTS_STREAM)  # type: ignore[assignment]
    finally:
        await r.aclose()
    return [CostEvent.from_stream_fields(fields) for _, fields in entries]


async def test_stream_survives_malformed_frames_and_reports_offline_analyses(
    start_server: Any, redis_client: aioredis.Redis, redis_url: str
) -> None:
    _, stub = await start_server()
    reqs = slide_requests(5.0)
    good = len(reqs)
    w, h = 320, 180
    bad = {
        20: vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=w, height=h, sequence=10_020, data=b"\0" * 100),
        40: vision_pb2.Frame(format=99, width=w, height=h, sequence=10_040, data=b"\0" * 10),  # type: ignore[arg-type]
        60: vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=100_000, height=h, sequence=10_060),
        80: vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_JPEG, sequence=10_080, data=b"\xff\xd8\xff" + b"x" * 50),
        100: vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_RGB24, width=w, height=h, sequence=10_100,
                              data=b"\0" * (w * h * 3 - 1)),
    }
    for pos in sorted(bad, reverse=True):
        reqs.insert(pos, vision_pb2.StreamFramesRequest(frame=bad[pos]))
    reqs.insert(120, vision_pb2.StreamFramesRequest())  # no frame at all

    verdicts, analyses = await collect(stub.StreamFrames(requests_from(reqs), metadata=md()))

    assert len(verdicts) == len(reqs), "one verdict per frame, malformed ones included"
    assert [v.sequence for v in verdicts] == [r.frame.sequence for r in reqs]
    errors = {v.sequence: v.reason for v in verdicts if v.kind == ERROR}
    assert set(errors) == {10_020, 10_040, 10_060, 10_080, 10_100, 0}
    assert "size mismatch" in errors[10_020] and "I420 320x180 needs 86400 bytes" in errors[10_020]
    assert "unknown format 99" in errors[10_040]
    assert "oversized" in errors[10_060]
    assert "undecodable JPEG" in errors[10_080]
    assert "size mismatch: RGB24" in errors[10_100]
    assert all(r.startswith("malformed: ") for r in errors.values())
    assert any("no frame" in r for r in errors.values())

    good_verdicts = [v for v in verdicts if v.kind != ERROR]
    assert len(good_verdicts) == good
    first = good_verdicts[0]
    assert first.kind == KEPT and first.reason == "first_frame" and first.distance == -1 and len(first.hash) == 16
    kept = [v for v in good_verdicts if v.kind == KEPT]
    # the deck cuts to the next slide at 3.5 s (frame 105): kept shortly after, and frames after errors still decided
    assert any(v.reason == "changed" and 105 <= v.sequence <= 110 for v in kept), [(v.sequence, v.reason) for v in kept]
    assert len(kept) <= 4
    skipped = [v for v in good_verdicts if v.kind == SKIPPED]
    assert {v.reason for v in skipped} >= {"duplicate"}
    change = next(v for v in kept if v.reason == "changed")
    assert change.changed_area > 0.02 and change.change_width > 0 and change.change_height > 0
    assert 0 <= change.distance <= 64

    # analyses: offline, labelled, for kept frames only, estimated usage, zero cost
    assert 1 <= len(analyses) <= len(kept)
    kept_seqs = {v.sequence for v in kept}
    for a in analyses:
        assert a.sequence in kept_seqs
        assert a.provider.offline and a.provider.provider == "offline" and a.provider.model == "offline-vision"
        assert a.description.startswith("[offline vision:") and "not read" in a.description
        assert "320x180" in a.description
        assert a.usage.estimated and a.usage.images == 1 and a.cost_usd > 0
    assert analyses[-1].sequence == max(kept_seqs), "the newest kept frame is always analysed"

    events = await cost_events(redis_url)
    assert len(events) == len(analyses)
    for e, a in zip(events, analyses, strict=True):
        # The one offline rule: list price of the vision model it stands in for, on estimated usage, labelled.
        stood_in = default_catalog().tier_model("standard")
        assert e.kind.value == "vision" and e.offline and e.usage.estimated and e.attributes["priced_as"] == stood_in
        assert e.cost_usd == pytest.approx(default_catalog().cost(stood_in, e.usage)) and e.cost_usd > 0
        assert e.tenant_id == "org_test" and e.session_id == "sess-1" and e.model == "offline-vision"
        assert e.attributes["sequence"] == str(a.sequence)
    # covered seconds add up to the stream time from the first frame to the last analysed one
    last_ts = max(a.timestamp_ms for a in analyses)
    assert sum(e.covered_seconds or 0 for e in events) == pytest.approx(last_ts / 1000.0)
    last_seq = max(a.sequence for a in analyses)
    assert sum(e.frames_considered or 0 for e in events) == sum(1 for v in good_verdicts if v.sequence <= last_seq)

    resp = await stub.GetContext(vision_pb2.GetContextRequest(), metadata=md())
    assert [a.sequence for a in resp.analyses] == [a.sequence for a in reversed(analyses)][:5]
    stamps = [a.completed_at_ms for a in resp.analyses]
    assert stamps == sorted(stamps, reverse=True) and all(s > 0 for s in stamps)


async def test_get_context_is_shared_across_instances_and_isolated_by_tenant(
    start_server: Any, redis_client: aioredis.Redis
) -> None:
    _, stub_a = await start_server()
    _, stub_b = await start_server()
    reqs = solid_pair_requests(7)
    # pace the sender so that the (fast) offline provider keeps up: every kept frame is analysed
    verdicts, analyses = await collect(stub_a.StreamFrames(requests_from(reqs, pause_s=0.02),
                                                           metadata=md("org_a", "shared-1")))
    kept = [v.sequence for v in verdicts if v.kind == KEPT]
    assert len(kept) == 7
    assert len(analyses) >= 5

    from_b = await stub_b.GetContext(vision_pb2.GetContextRequest(), metadata=md("org_a", "shared-1"))
    assert [a.sequence for a in from_b.analyses] == [a.sequence for a in analyses][::-1][:5]
    assert [a.description for a in from_b.analyses] == [a.description for a in analyses][::-1][:5]

    limited = await stub_b.GetContext(vision_pb2.GetContextRequest(session_id="shared-1", limit=2),
                                      metadata=md("org_a", "other-session"))
    assert [a.sequence for a in limited.analyses] == [a.sequence for a in analyses][::-1][:2]

    other_tenant = await stub_b.GetContext(vision_pb2.GetContextRequest(), metadata=md("org_b", "shared-1"))
    assert list(other_tenant.analyses) == []
    unknown = await stub_a.GetContext(vision_pb2.GetContextRequest(session_id="never-seen"), metadata=md("org_a"))
    assert list(unknown.analyses) == []

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub_a.GetContext(vision_pb2.GetContextRequest(session_id="bad id!"), metadata=md("org_a"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_context_expires_and_keeps_five(start_server: Any, redis_client: aioredis.Redis) -> None:
    _, stub = await start_server(context_ttl_seconds=60)
    await collect(stub.StreamFrames(requests_from(solid_pair_requests(8), pause_s=0.02), metadata=md("org_t", "ttl")))
    key = "frugal:vision:context:org_t:ttl"
    assert await redis_client.zcard(key) == 5
    ttl = await redis_client.ttl(key)
    assert 0 < ttl <= 60


async def test_stream_requires_tenant_metadata(start_server: Any) -> None:
    _, stub = await start_server()
    # No request iterator: nothing races the rejection on the client side.
    call = stub.StreamFrames(metadata=(("x-session-id", "s"),))
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-tenant-id" in (await call.details() or "")


async def test_metrics_count_frames_verdicts_and_calls(start_server: Any, redis_client: aioredis.Redis) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    tenant = "org_metrics"
    before = {
        "received": value("vision_frames_received_total", tenant=tenant, format="i420"),
        "kept": value("vision_frames_kept_total", tenant=tenant, reason="changed"),
        "dup": value("vision_frames_skipped_total", tenant=tenant, reason="duplicate"),
        "err": value("vision_frames_error_total", tenant=tenant, kind="size_mismatch"),
        "calls": value("vision_calls_total", provider="offline", model="offline-vision", offline="true",
                       outcome="ok"),
        "hash": value("vision_frame_hash_seconds_count", format="i420"),
    }
    _, stub = await start_server()
    reqs = solid_pair_requests(3)
    reqs.insert(2, vision_pb2.StreamFramesRequest(frame=vision_pb2.Frame(
        format=vision_pb2.FRAME_FORMAT_I420, width=64, height=36, data=b"short")))
    verdicts, analyses = await collect(stub.StreamFrames(requests_from(reqs, pause_s=0.02), metadata=md(tenant)))
    kept = sum(1 for v in verdicts if v.kind == KEPT)
    assert value("vision_frames_received_total", tenant=tenant, format="i420") - before["received"] == len(reqs)
    assert value("vision_frames_error_total", tenant=tenant, kind="size_mismatch") - before["err"] == 1
    assert value("vision_frames_kept_total", tenant=tenant, reason="changed") - before["kept"] == kept - 1
    # screen 0: first_frame, duplicate; screens 1 and 2: in_motion, then changed (kept)
    assert kept == 3
    assert value("vision_frames_skipped_total", tenant=tenant, reason="duplicate") - before["dup"] == 1
    assert value("vision_frame_hash_seconds_count", format="i420") - before["hash"] == len(reqs) - 1
    assert value("vision_calls_total", provider="offline", model="offline-vision", offline="true",
                 outcome="ok") - before["calls"] == len(analyses)
    rate = value("vision_dedup_rate", tenant=tenant)
    assert 0 < rate < 1
    assert value("vision_analysis_queue_depth") == 0


def screen(k: int, w: int = 320, h: int = 180, seq: int = 0, ts: int = 0, track: str = "screen") -> Any:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = (40, 60, 90) if k % 2 else (220, 210, 200)
    img[h // 4 : h // 2, (k * 17) % (w // 2) : (k * 17) % (w // 2) + w // 4] = (200, 40, 40)
    f = i420_frame(corpus.CorpusFrame("s", seq, ts, img, False), track_id=track)
    return vision_pb2.StreamFramesRequest(frame=f)


async def test_a_change_followed_by_no_frame_is_kept_by_the_timer(start_server: Any,
                                                                   redis_client: aioredis.Redis) -> None:
    """A share whose track stops delivering after a change (a static screen): the last frame shows the new
    screen, no frame confirms it is still, and it is kept anyway, by the quiet-time timer."""
    _, stub = await start_server()
    got: list[Any] = []
    second_sent = asyncio.Event()
    timer_verdict = asyncio.Event()

    async def reqs() -> AsyncIterator[Any]:
        yield screen(0, seq=1, ts=1000)
        yield screen(1, seq=2, ts=1200)
        second_sent.set()
        await timer_verdict.wait()  # no further frame until the service keeps the second one on its own

    call = stub.StreamFrames(reqs(), metadata=md("org_timer", "s-timer"))
    async for resp in call:
        if resp.HasField("verdict"):
            got.append(resp.verdict)
            if resp.verdict.by_timer:
                timer_verdict.set()
                break
    call.cancel()
    assert [(v.sequence, v.kind, v.by_timer) for v in got] == [(1, KEPT, False), (2, SKIPPED, False),
                                                               (2, KEPT, True)]
    assert got[2].reason == "changed" and got[2].hash == got[1].hash


async def test_a_change_pending_when_the_client_half_closes_is_kept_and_analysed(
    start_server: Any, redis_client: aioredis.Redis
) -> None:
    """End of stream (the share stops, a recording ends): the last frame shows a change nothing confirmed yet.
    It is decided at once, as its timer would have, kept, and analysed before the stream ends."""
    _, stub = await start_server()
    reqs = [screen(0, seq=1, ts=1000), screen(1, seq=2, ts=1200)]  # half-close right after the change
    verdicts, analyses = await collect(stub.StreamFrames(requests_from(reqs), metadata=md("org_eos", "s-eos")))
    assert [(v.sequence, v.kind, v.by_timer) for v in verdicts] == [(1, KEPT, False), (2, SKIPPED, False),
                                                                    (2, KEPT, True)]
    assert verdicts[2].reason == "changed"
    assert sorted(a.sequence for a in analyses) == [1, 2]  # the last change reached the model


async def test_a_stream_may_not_open_unlimited_tracks(start_server: Any, redis_client: aioredis.Redis) -> None:
    _, stub = await start_server(max_tracks_per_stream=3)
    reqs = [screen(0, seq=i, ts=1000 + i, track=f"TR_{i}") for i in range(5)] + [screen(1, seq=9, ts=2000,
                                                                                      track="TR_0")]
    verdicts, _ = await collect(stub.StreamFrames(requests_from(reqs), metadata=md("org_tracks", "s-tr")))
    kinds = [v.kind for v in verdicts]
    assert kinds[:3] == [KEPT, KEPT, KEPT] and kinds[3:5] == [ERROR, ERROR]
    assert "too many tracks" in verdicts[3].reason and "MAX_TRACKS_PER_STREAM=3" in verdicts[3].reason
    assert kinds[5] != ERROR  # the tracks it has still work


async def test_idle_streams_time_out(start_server: Any, redis_client: aioredis.Redis) -> None:
    _, stub = await start_server(stream_idle_timeout_s=0.3)

    async def reqs() -> AsyncIterator[Any]:
        yield screen(0, seq=1, ts=1000)
        await asyncio.sleep(30)

    call = stub.StreamFrames(reqs(), metadata=md("org_idle", "s-idle"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "STREAM_IDLE_TIMEOUT_S" in (err.value.details() or "")


async def test_oversized_messages_end_resource_exhausted_every_time_and_leak_nothing(
    start_server: Any, redis_client: aioredis.Redis
) -> None:
    from prometheus_client import REGISTRY

    def active() -> float:
        return REGISTRY.get_sample_value("vision_active_streams") or 0.0

    app, _ = await start_server(max_message_bytes=1024 * 1024)
    before = active()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}",
                                        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    from frugal.api.vision.v1 import vision_pb2_grpc

    stub = vision_pb2_grpc.VisionServiceStub(channel)
    codes = []
    try:
        for i in range(6):
            async def reqs(i: int = i) -> AsyncIterator[Any]:
                yield screen(0, seq=1, ts=1000)
                if i % 2:
                    await asyncio.sleep(0.05)  # both orders: before and after the first verdict
                yield vision_pb2.StreamFramesRequest(frame=vision_pb2.Frame(data=b"\0" * (2 * 1024 * 1024)))
                await asyncio.sleep(1)

            call = stub.StreamFrames(reqs(), metadata=md("org_big", f"s-big-{i}"))
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for _ in call:
                    pass
            codes.append(await call.code())
        for _ in range(100):  # the handlers' cleanup runs as each call ends
            if active() == before:
                break
            await asyncio.sleep(0.02)
    finally:
        await channel.close()
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 6
    assert active() == before


async def test_huge_encoded_images_are_refused_before_decoding(start_server: Any,
                                                                redis_client: aioredis.Redis) -> None:
    png = cv2.imencode(".png", np.zeros((4320, 7680), np.uint8))[1].tobytes()  # 8K, a few KB compressed
    assert len(png) < 200_000
    # The same header with a body no decoder accepts: "oversized", not "undecodable", shows the refusal comes
    # from the header, before any decoding.
    truncated = png[:33] + b"\0" * 1000
    _, stub = await start_server()
    reqs = [vision_pb2.StreamFramesRequest(frame=vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_PNG, data=d,
                                                                  sequence=i)) for i, d in enumerate((png, truncated))]
    verdicts, _ = await collect(stub.StreamFrames(requests_from(reqs), metadata=md("org_png", "s-png")))
    assert len(verdicts) == 2
    for v in verdicts:
        assert v.kind == ERROR and "oversized" in v.reason and "7680x4320" in v.reason
