"""The demo replay against the whole mesh (five real services as processes, real Postgres and Redis): every
turn answered, and billing's ledger agrees with what the turns reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal.common.cost_events import CostKind
from frugal.devkit.demo.session import format_report, run_demo
from frugal.devkit.localmesh import LocalMesh
from frugal.gateway.config import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


async def test_demo_replay_and_ledger_agree(mesh: LocalMesh, redis_url: str) -> None:
    addrs = {f"{k.split('-')[0]}_addr": f"127.0.0.1:{v}" for k, v in mesh.ports.items() if k != "media-gateway"}
    settings = Settings(redis_url=redis_url, grpc_port=0, metrics_port=0, **addrs)  # type: ignore[arg-type]
    lines: list[str] = []
    run = await run_demo(settings, ROOT / "demo" / "session", ROOT / "demo" / "kb", speed=4.0, write=lines.append)
    print("\n".join([*lines, *format_report(run)]))
    result, led = run.result, run.ledger
    assert led is not None

    # Every recorded turn got an answer through the router (spoken ones through VAD and the offline STT).
    assert len(result.turns) == 8
    assert all(t.report is not None and t.report.ok for t in result.turns), [t.note for t in result.turns]
    assert [t.heard for t in result.turns if t.spec.kind == "audio"] == [t.spec.transcript for t in result.turns
                                                                         if t.spec.kind == "audio"]

    by_kind = {b.key: b for b in led.by_kind}
    # One ledger event per paid call, per kind.
    assert by_kind["llm"].events == len(result.llm_event_ids) == len(set(result.llm_event_ids))
    assert len(result.llm_event_ids) >= len(result.reports)
    speech = {k: [e for e in result.speech_events if e.kind is k] for k in (CostKind.STT, CostKind.TTS)}
    assert by_kind["stt"].events == len(speech[CostKind.STT]) == 2  # the two WAV turns
    assert by_kind["tts"].events == len(speech[CostKind.TTS]) > 0
    assert result.vision is not None and result.vision.kept >= 2 and result.vision.skipped > result.vision.kept
    assert by_kind["vision"].events == result.vision.analyses
    assert by_kind["embedding"].events >= len(run.ingested)  # rag: the knowledge base ingest (and queries)
    assert led.events == sum(b.events for b in led.by_kind)

    # Totals equal the sum of the turns' own costs (as the router reported them).
    assert by_kind["llm"].cost_usd == pytest.approx(sum(r.cost_usd for r in result.reports), abs=1e-9)
    assert by_kind["llm"].baseline_cost_usd == pytest.approx(sum(r.baseline_cost_usd for r in result.reports),
                                                             rel=1e-6, abs=1e-9)
    assert by_kind["stt"].usage.audio_seconds == pytest.approx(
        sum(e.usage.audio_seconds for e in speech[CostKind.STT]), abs=1e-3)
    assert by_kind["tts"].usage.characters == sum(e.usage.characters for e in speech[CostKind.TTS])
    assert led.cost_usd == pytest.approx(sum(b.cost_usd for b in led.by_kind), abs=1e-9)

    # Savings come from the ledger's own totals, and offline events say so.
    expected = 1 - led.cost_usd / led.baseline_cost_usd if led.baseline_cost_usd else 0.0
    assert led.savings == pytest.approx(expected, abs=1e-9)
    assert led.baseline_cost_usd > 0
    assert led.estimated_events == led.events  # no keys: every event is an offline estimate
