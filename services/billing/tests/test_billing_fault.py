"""The fault run of bench/billing/fault.py, smaller: producer, Redis (AOF), PostgreSQL and both consumers each
killed and restarted once; nothing lost, nothing doubled, the ledger's sum equals the produced sum."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

FAULT = Path(__file__).resolve().parents[3] / "bench" / "billing" / "fault.py"


async def test_fault_run_loses_nothing_and_doubles_nothing() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FAULT), "--events", "2500", "--tenants", "10", "--timeout", "90",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 280)  # a hang guard under pytest's 300 s
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "lost 0, doubled 0, dead-lettered 0" in text and ": equal" in text
    for part in ("redis SIGKILL", "producer SIGKILL", "postgres stopped", "consumer-1 SIGKILL", "consumer-2 SIGKILL"):
        assert part in text
