"""`make demo`'s entry function (frugal.devkit.demo.session.demo_main) fails when a turn fails, and passes when
every turn is answered: against real billing, rag and router, and a router that refuses (ScriptedRouter, the
conftest's test double of the router)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from frugal.devkit.demo.session import demo_main
from frugal.gateway.config import Settings

SESSION = '''title = "tiny demo"
room = "tenant_org_lumen_demo-call"
[[turns]]
at = 0.2
text = "What is Lumen Desk?"
[[turns]]
at = 0.6
text = "How much is the Business plan?"
'''


def tiny_demo(tmp_path: Path) -> tuple[Path, Path]:
    session, kb = tmp_path / "session", tmp_path / "kb"
    session.mkdir()
    kb.mkdir()
    (session / "session.toml").write_text(SESSION)
    (kb / "pricing.md").write_text("# Pricing\n\nThe Business plan costs 40 dollars per seat and month.\n")
    return session, kb


async def test_the_demo_exits_non_zero_when_a_turn_fails(
    mesh: dict[str, str], rag_addr: str, scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    dead_addr: str, tmp_path: Path,
) -> None:
    router, refusing = scripted_router
    router.refuse = grpc.StatusCode.PERMISSION_DENIED
    session, kb = tiny_demo(tmp_path)
    lines: list[str] = []
    settings = make_settings(billing_addr=mesh["billing"], rag_addr=rag_addr, router_addr=refusing,
                             vision_addr=dead_addr)
    assert await demo_main(settings, session, kb, speed=4.0, write=lines.append) == 1
    assert any("DEMO FAILED: 2 of 2 turn(s)" in line for line in lines), lines

    lines.clear()
    settings = make_settings(billing_addr=mesh["billing"], rag_addr=rag_addr, router_addr=mesh["router"],
                             vision_addr=dead_addr)
    assert await demo_main(settings, session, kb, speed=4.0, write=lines.append) == 0
    assert not any("DEMO FAILED" in line for line in lines)
