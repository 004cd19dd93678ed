"""Reading what CostEventProducers left in a spool directory (tests of the "cost Redis is down" paths)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from frugal.common.cost_events import CostEvent


def read_spool(spool_dir: Path) -> list[CostEvent]:
    """Every event in every spool file under `spool_dir`, in file order."""
    return [CostEvent.model_validate_json(line) for f in sorted(spool_dir.iterdir()) if f.is_file()
            for line in f.read_bytes().splitlines() if line.strip()]


async def spooled_events(spool_dir: Path, *, at_least: int, timeout_s: float = 5.0) -> list[CostEvent]:
    """`read_spool` once it holds `at_least` events, or at `timeout_s` (the caller's assertion then shows what
    is missing). A producer may finish a paid call's fsync just after the call that paid has returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = read_spool(spool_dir)
        if len(events) >= at_least or time.monotonic() >= deadline:
            return events
        await asyncio.sleep(0.05)
