"""Media-gateway memory: resident memory of a job process, and per concurrent session, on replayed sessions.

    uv run python bench/gateway/run.py            # 1, 5 and 20 concurrent sessions (~2-3 minutes)
    uv run python bench/gateway/run.py --quick    # 1 and 5 sessions, shorter conversations (< 60 s)

Each figure comes from a fresh child process that does what a job process does (imports, the Silero VAD
prewarm) and then runs N `AgentSession`s at once, built by the gateway's own `build_session`: offline STT/TTS
stand-ins, the router-backed LLM, the speech cost meter, a microphone fed 20 ms frames of speech-like audio and
silence (so the VAD runs as in a call), text turns answered through gRPC, the agent's speech played into a
simulated sink. The router is a stand-in in this (parent) process answering every turn with a fixed sentence:
its memory is not the gateway's, and no Postgres/Redis is needed.

Printed per N: RSS (and USS/PSS from /proc/self/smaps_rollup) of the process before the sessions (baseline:
what an idle, prewarmed job process holds) and at the peak while all N run, and the marginal memory per session
((peak - baseline) / N). Baseline beside it: a bare Python process that imported nothing of ours.

In production livekit-agents runs one job per process: a pod holding K concurrent sessions holds about
K x (baseline + one session) of job processes (forkserver children share read-only pages, so their PSS is
lower than their RSS) plus the main process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc

ANSWER = "The Business plan costs forty dollars per seat and month, billed annually, with single sign-on included."
QUESTIONS = ("What is Lumen Desk?", "How much is the Business plan?", "Do you support single sign-on?",
             "Can I export my data?", "How do I invite my team?")


def memory_kib() -> dict[str, int]:
    """RSS, PSS and USS of this process (KiB), from /proc."""
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0])
    return {"rss": out["Rss"], "pss": out["Pss"], "uss": out["Private_Clean"] + out["Private_Dirty"]}


class StandInRouter(router_pb2_grpc.RouterServiceServicer):
    """Answers every turn with the same sentence in a few deltas (no providers, no Redis)."""

    async def Respond(self, request: router_pb2.RespondRequest,  # noqa: N802 - gRPC method name
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[router_pb2.RespondResponse]:
        yield router_pb2.RespondResponse(started=router_pb2.RespondStarted(
            decision=router_pb2.Decision(tier=common_pb2.TIER_LITE, model="stand-in")))
        for word in ANSWER.split(" "):
            yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=word + " "))
        yield router_pb2.RespondResponse(completed=router_pb2.RespondCompleted(
            tier=common_pb2.TIER_LITE, usage=common_pb2.Usage(input_tokens=200, output_tokens=30)))

    async def Route(self, request: router_pb2.RouteRequest,  # noqa: N802 - gRPC method name
                    context: grpc.aio.ServicerContext[Any, Any]) -> router_pb2.RouteResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stand-in")


async def child(n: int, turns: int, router_addr: str) -> dict[str, Any]:
    from livekit import rtc

    from frugal.api.billing.v1 import billing_pb2
    from frugal.common.pricing import default_catalog
    from frugal.devkit.demo import synth
    from frugal.gateway.agent import build_session, load_vad
    from frugal.gateway.clients import MeshClients, ResolvedTenant
    from frugal.gateway.config import Settings
    from frugal.gateway.replay.runner import ReplayAudioInput, SimulatedAudioOutput

    settings = Settings(grpc_port=0, metrics_port=0, router_addr=router_addr, welcome_message="",
                        kb_tool_enabled=False, log_format="text")
    vad_model = load_vad()  # the job process's prewarm
    clients = MeshClients(settings)
    tenant = ResolvedTenant(tenant_id="org_bench", room="bench",
                            policy=billing_pb2.TenantPolicy(tenant_id="org_bench", display_name="Bench"))
    await asyncio.sleep(0.5)
    baseline = memory_kib()
    speech = list(synth.utterance(1.0, seed=3).frames(20))
    quiet = rtc.AudioFrame(bytes(640), 16000, 1, 320)
    peak = dict(baseline)
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        parts = build_session(settings, clients, tenant, f"bench-{i}", vad_model=vad_model, producer=None,
                              catalog=default_catalog(), user_away_timeout=None)
        mic, speaker = ReplayAudioInput(), SimulatedAudioOutput(speed=50.0)
        parts.session.input.audio, parts.session.output.audio = mic, speaker
        stop = asyncio.Event()

        async def feed() -> None:  # a caller's microphone: speech-like audio, then silence, every 20 ms
            k = 0
            while not stop.is_set():
                mic.push(speech[k % len(speech)] if (k // 50) % 4 == 0 else quiet)
                k += 1
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(feed())
        try:
            await parts.session.start(parts.agent)
            for t in range(turns):
                await parts.session.run(user_input=QUESTIONS[(i + t) % len(QUESTIONS)])
                answered += 1
        finally:
            stop.set()
            await feeder
            await parts.aclose()
            await speaker.aclose()

    async def sample() -> None:
        while True:
            m = memory_kib()
            for k in peak:
                peak[k] = max(peak[k], m[k])
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    wall = time.monotonic() - t0
    sampler.cancel()
    await clients.aclose()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"n": n, "baseline": baseline, "peak": peak, "answered": answered, "wall_s": wall, "errors": errors}


def bare_python_rss() -> int:
    code = ("import json;f=open('/proc/self/smaps_rollup');"
            "print(json.dumps({l.split(':')[0]: int(l.split()[1]) for l in f if l.startswith('Rss')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout)["Rss"])


async def parent(counts: list[int], turns: int) -> int:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(StandInRouter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    bare = bare_python_rss()
    rows: list[dict[str, Any]] = []
    try:
        for n in counts:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", str(n), "--turns", str(turns), "--router", f"127.0.0.1:{port}",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, "LOG_LEVEL": "ERROR"},
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                print(f"child with {n} sessions failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            rows.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        await server.stop(0.5)

    mib = 1024.0
    print(f"bare python process: RSS {bare / mib:.0f} MiB (trivial baseline: nothing of ours imported)")
    print(f"{'sessions':>8} {'turns':>6} {'base RSS':>9} {'base PSS':>9} {'peak RSS':>9} {'peak USS':>9} "
          f"{'per session RSS':>16} {'wall s':>7}")
    for r in rows:
        b, p, n = r["baseline"], r["peak"], r["n"]
        per = (p["rss"] - b["rss"]) / n / mib
        print(f"{n:>8} {r['answered']:>6} {b['rss'] / mib:>8.0f}M {b['pss'] / mib:>8.0f}M {p['rss'] / mib:>8.0f}M "
              f"{p['uss'] / mib:>8.0f}M {per:>15.1f}M {r['wall_s']:>7.1f}")
        if r["errors"]:
            print(f"         errors: {r['errors'][:3]}")
    one = rows[0]
    job_process = one["peak"]["rss"] / mib
    print(f"\none job process with one live session (production: one job per process): ~{job_process:.0f} MiB RSS")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 and 5 sessions, 2 turns each")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--turns", type=int, default=4, help="turns per session (default 4)")
    p.add_argument("--router", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.turns, args.router))))
        return 0
    counts = [1, 5] if args.quick else [1, 5, 20]
    return asyncio.run(parent(counts, 2 if args.quick else args.turns))


if __name__ == "__main__":
    raise SystemExit(main())
