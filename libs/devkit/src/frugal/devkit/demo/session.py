"""The demo against a running mesh: register the demo tenant, ingest its knowledge base, replay the recorded
session, then read the ledger. Used by `scripts/demo.py` (`make demo`, through `demo_main`) and by the e2e test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.vision.v1 import vision_pb2
from frugal.common.admin_client import Ingested, ingest_markdown_folder, load_policy, upsert_tenant
from frugal.common.grpc_client import create_channel, outgoing_metadata
from frugal.common.pricing import default_catalog
from frugal.common.session_cost import format_usage_session_cost
from frugal.gateway.agent import SessionParts
from frugal.gateway.clients import TenantRejected
from frugal.gateway.config import Settings
from frugal.gateway.replay.runner import ReplayObserver, ReplayResult, ReplayTurn, run_replay
from frugal.gateway.replay.spec import SessionSpec

ROOT = Path(__file__).resolve().parents[6]
# The demo tenant is data, shared with the compose bootstrap (deploy/compose/bootstrap.py).
DEMO_POLICY = load_policy(ROOT / "demo" / "tenant.json")
DEMO_TENANT = DEMO_POLICY.tenant_id


async def register_tenant(billing_addr: str, policy: billing_pb2.TenantPolicy = DEMO_POLICY) -> bool:
    """UpsertTenant; True when the tenant was created (False: it existed and was updated)."""
    return await upsert_tenant(billing_addr, policy)


async def ingest_knowledge_base(rag_addr: str, kb_dir: Path, tenant_id: str = DEMO_TENANT) -> list[Ingested]:
    return await ingest_markdown_folder(rag_addr, kb_dir, tenant_id)


async def usage(billing_addr: str, tenant_id: str, since: datetime) -> billing_pb2.GetUsageResponse:
    start = Timestamp()
    start.FromDatetime(since)
    async with create_channel(billing_addr) as ch:
        return await billing_pb2_grpc.BillingServiceStub(ch).GetUsage(
            billing_pb2.GetUsageRequest(start=start),
            metadata=outgoing_metadata(tenant_id=tenant_id, session_id="demo-report"), timeout=15)


async def wait_for_ledger(billing_addr: str, tenant_id: str, since: datetime, *, at_least: int,
                          settle_s: float = 1.5, within_s: float = 60.0) -> billing_pb2.GetUsageResponse:
    """Polls GetUsage until the ledger holds `at_least` events and stops growing for `settle_s`."""
    deadline = time.monotonic() + within_s
    last: billing_pb2.GetUsageResponse | None = None
    stable_since = time.monotonic()
    while True:
        report = await usage(billing_addr, tenant_id, since)
        if last is None or report.events != last.events:
            stable_since = time.monotonic()
        last = report
        if report.events >= at_least and time.monotonic() - stable_since >= settle_s:
            return report
        if time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.3)


class DemoObserver(ReplayObserver):
    """Prints each turn's tier, model and cost, and the screen frames kept vs skipped as they happen."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        super().__init__(write)
        self.kept = 0
        self.skipped = 0
        self.analyses: list[vision_pb2.FrameAnalysis] = []

    def started(self, spec: SessionSpec, parts: SessionParts) -> None:
        self.write(f"\u25b6 replaying {spec.title!r} in room {spec.room} \u2192 tenant {parts.tenant.tenant_id} "
                   f"({parts.tenant.display_name}), session {parts.session_id}")
        for note in parts.notes:
            self.write(f"  {note}")

    def turn_started(self, turn: ReplayTurn) -> None:
        how = "spoken WAV \u2192 VAD \u2192 STT" if turn.spec.kind == "audio" else "text"
        self.write(f"\n[{turn.spec.at:5.1f}s] user ({how}): {turn.spec.said}")

    def turn_done(self, turn: ReplayTurn) -> None:
        r = turn.report
        if r is None:
            self.write(f"        no answer: {turn.note}")
            return
        if not r.ok:
            self.write(f"        apology after {r.error_code}: {r.answer}")
            return
        label = " (offline stand-in, estimated)" if r.offline else ""
        ctx = ", ".join(f"{k}:{v}" for k, v in sorted(r.context.items()))
        self.write(f"        tier={r.tier:<8} model={r.model}{label}  cost=${r.cost_usd:.6f} "
                   f"(all-premium ${r.baseline_cost_usd:.6f})  context[{ctx}]")
        self.write(f"        agent: {r.answer[:160]}{'...' if len(r.answer) > 160 else ''}")
        if r.chat_only_chars:
            self.write(f"        long answer: spoken up to the first sentence end past the speech budget, posted whole "
                       f"to the room chat ({r.chat_only_chars} characters not spoken)")

    def vision_event(self, track_id: str, resp: vision_pb2.StreamFramesResponse) -> None:
        kind = resp.WhichOneof("event")
        if kind == "verdict":
            v = resp.verdict
            if v.kind == vision_pb2.VERDICT_KIND_KEPT:
                self.kept += 1
                self.write(f"        [screen] frame #{v.sequence} at {v.timestamp_ms / 1000:.1f}s KEPT ({v.reason}); "
                           f"so far {self.kept} kept / {self.skipped} skipped")
            elif v.kind == vision_pb2.VERDICT_KIND_SKIPPED:
                self.skipped += 1
        elif kind == "analysis":
            a = resp.analysis
            self.analyses.append(a)
            label = " (offline stand-in)" if a.provider.offline else ""
            self.write(f"        [vision] frame #{a.sequence} analysed by {a.provider.model}{label}: "
                       f"{a.description[:100]}  cost=${a.cost_usd:.6f}")

    def finished(self, result: ReplayResult) -> None:
        pass


@dataclass
class DemoRun:
    result: ReplayResult
    ingested: list[Ingested] = field(default_factory=list)
    ledger: billing_pb2.GetUsageResponse | None = None
    observer: DemoObserver | None = None


async def run_demo(
    settings: Settings,
    session_dir: Path,
    kb_dir: Path,
    *,
    speed: float = 2.0,
    write: Callable[[str], None] = print,
) -> DemoRun:
    since = datetime.now(UTC)
    created = await register_tenant(settings.billing_addr)
    write(f"tenant {DEMO_TENANT} {'registered' if created else 'updated'} in billing")
    ingested = await ingest_knowledge_base(settings.rag_addr, kb_dir)
    for doc in ingested:
        label = " (offline local embedder)" if doc.offline else ""
        write(f"  ingested {doc.document_id}: {doc.chunks} chunks, {doc.outcome}, {doc.embedder}{label}")
    observer = DemoObserver(write)
    result = await run_replay(SessionSpec.load(session_dir), settings, speed=speed, observer=observer)
    # Every paid call the replay knows of: router turns (their event ids) and the gateway's STT/TTS events.
    known = len(result.llm_event_ids) + len(result.speech_events)
    ledger = await wait_for_ledger(settings.billing_addr, DEMO_TENANT, since, at_least=known)
    return DemoRun(result=result, ingested=ingested, ledger=ledger, observer=observer)


def list_price_estimate(result: ReplayResult) -> tuple[float, float] | None:
    """What the replay's LLM turns would cost at list prices on the tiers the router chose, and all premium.
    Useful offline, where the stand-in's own cost is zero."""
    catalog = default_catalog()
    routed = premium = 0.0
    for r in result.reports:
        if r.usage is None or r.tier not in ("lite", "standard", "premium"):
            continue
        routed += catalog.cost(catalog.tier_model(r.tier), r.usage)  # type: ignore[arg-type]
        premium += catalog.llm_baseline_cost(r.usage)
    return (routed, premium) if premium > 0 else None


def format_report(run: DemoRun) -> list[str]:
    """The final report, read from billing's ledger (GetUsage)."""
    lines: list[str] = []
    r = run.result
    v = r.vision
    lines.append("")
    lines.append("=" * 78)
    lines.append(f"session {r.session_id}: {len(r.reports)} answered turns of {len(r.turns)}, "
                 f"{r.wall_seconds:.0f}s wall time")
    if v is not None:
        lines.append(f"screen share: {r.frames_read} frames captured, {r.frames_throttled} throttled in the gateway "
                     f"(speaking-aware fps), {v.sent} sent to vision-dedup: {v.kept} kept, {v.skipped} skipped, "
                     f"{v.analyses} analysed")
    led = run.ledger
    if led is None:
        lines.append("no ledger report")
        return lines
    lines.append(f"ledger (billing GetUsage, this run): {led.events} cost events, {led.estimated_events} estimated "
                 "(offline stand-ins: usage estimated, no real spend)")
    lines.append(f"  {'kind':<10} {'events':>6} {'cost USD':>12} {'baseline USD':>13} {'savings':>8}")
    for b in sorted(led.by_kind, key=lambda b: b.key):
        lines.append(f"  {b.key:<10} {b.events:>6} {b.cost_usd:>12.6f} {b.baseline_cost_usd:>13.6f} {b.savings:>8.1%}")
    lines.append(f"  {'tier':<10} {'events':>6} {'cost USD':>12} {'baseline USD':>13} {'savings':>8}")
    for b in sorted(led.by_tier, key=lambda b: b.key):
        lines.append(f"  {b.key:<10} {b.events:>6} {b.cost_usd:>12.6f} {b.baseline_cost_usd:>13.6f} {b.savings:>8.1%}")
    lines.append(f"  {'TOTAL':<10} {led.events:>6} {led.cost_usd:>12.6f} {led.baseline_cost_usd:>13.6f} "
                 f"{led.savings:>8.1%}")
    lines.append("baseline = every LLM turn on the premium model with the same tokens, and one vision call per second "
                 "of screen share without dedup.")
    est = list_price_estimate(r)
    if est is not None:
        routed, premium = est
        lines.append(f"LLM at list prices (same tokens, routed tiers vs all premium): ${routed:.6f} vs ${premium:.6f} "
                     f"= {1 - routed / premium if premium else 0:.1%} saved (estimate from the turns' token counts)")
    lines += format_usage_session_cost(led.session_cost)  # frugal.common.session_cost: every kind, per minute
    if led.estimated_events:
        lines.append(f"OFFLINE: {led.estimated_events} of {led.events} events come from offline stand-ins (no API "
                     "keys): their usage is estimated and no provider was paid; treat those figures as estimates.")
    return lines


def failed_turns(run: DemoRun) -> list[ReplayTurn]:
    """Turns without a normal answer (no turn detected, or the router failed)."""
    return [t for t in run.result.turns if t.report is None or not t.report.ok]


async def demo_main(
    settings: Settings,
    session_dir: Path,
    kb_dir: Path,
    *,
    speed: float = 2.0,
    write: Callable[[str], None] = print,
) -> int:
    """The demo as a command: 0 when every turn was answered, 1 otherwise (so `make demo` fails loudly)."""
    try:
        run = await run_demo(settings, session_dir, kb_dir, speed=speed, write=write)
    except TenantRejected as err:
        write(f"demo: {err}")
        return 1
    for line in format_report(run):
        write(line)
    failed = failed_turns(run)
    if failed:
        write(f"\nDEMO FAILED: {len(failed)} of {len(run.result.turns)} turn(s) were not answered normally "
              "(see above and the service logs).")
        return 1
    return 0
