"""Router performance: decision latency in-process, and Route RPC throughput on loopback.

    uv run python bench/router/run.py            # ~1-2 minutes
    uv run python bench/router/run.py --quick    # < 60 s

1. In-process, pinned to one core with one BLAS thread: `Decider.decide` (features, embedding, score,
   thresholds, overrides, cost estimate) for the default scorer (learned-v1), hybrid-v2 and the seed heuristic;
   p50/p95/p99 wall time and mean CPU time per decision, over conversational turns of several lengths (and
   the held-out routing prompts when ../shared/data/routing is present); the cascade's answer scorer over the
   held-out RouterBench answers; resident memory added by loading the scorers (the MiniLM encoder included).
   Targets (issue 20): decision p50 <= 3 ms, p99 <= 10 ms; answer scoring p99 <= 20 ms; <= 300 MB added.
2. Route over gRPC on 127.0.0.1: a real router process (`python -m frugal.router`) with an embedded Redis
   (tenant policy reads), N concurrent callers in this process for a fixed time; requests/s and latency
   percentiles. The machine's cores are shared, so absolute figures vary between runs; compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.healthcheck import wait_serving
from frugal.common.pricing import default_catalog
from frugal.devkit.devstack import EmbeddedRedis, free_port
from frugal.devkit.routing.evaldata import DataMissing, load_all
from frugal.encoder.minilm import limit_blas_threads
from frugal.router.cascade import AnswerScorer
from frugal.router.decision import Decider, TurnText
from frugal.router.learned import load_learned_payload
from frugal.router.scoring import DEFAULT_SCORER, HYBRID_SCORER, SEED_SCORER, ScorerSet, TierMix, load_scorers

TURNS = [
    "hi",
    "Can you hear me?",
    "What's on the agenda for today's meeting?",
    "Summarize what's on my screen in two sentences.",
    "What is our refund policy for annual plans, and does it differ for enterprise customers?",
    "Can you compare Postgres and MySQL replication and design a failover plan for our three data centers, "
    "taking into account that the European region must keep data residency?",
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n"
    "    return out + a + b\nWhy is this slow for large lists, and how would you rewrite it?",
    ("Analyze this quarterly report: revenue grew 12% in EMEA, 4% in APAC and fell 3% in the Americas, "
     "while gross margins moved from 61% to 58%. ") * 6,
]


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_mb(pid: str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_SCORERS: list[ScorerSet] = []


def scorers_once() -> ScorerSet:
    if not _SCORERS:
        before = rss_mb()
        t0 = time.perf_counter()
        _SCORERS.append(load_scorers())
        print(f"  loading the scorers (learned-v1 with the MiniLM encoder, checksums checked): "
              f"{time.perf_counter() - t0:.2f}s, resident memory +{rss_mb() - before:.0f} MB "
              f"({before:.0f} -> {rss_mb():.0f} MB)")
    return _SCORERS[0]


def bench_decisions(texts: Sequence[str], rounds: int) -> None:
    scorers = scorers_once()
    catalog = default_catalog()
    decider = Decider(scorers, catalog, TierMix(0.6, 0.25, 0.15), provider_of=lambda tier: ("offline", True))
    results: dict[str, float] = {}
    for name in (DEFAULT_SCORER, HYBRID_SCORER, SEED_SCORER):
        turns = [TurnText(t) for t in texts]
        for t in turns[:50]:
            decider.decide(t, scorer_name=name)  # warm-up
        walls: list[float] = []
        cpus: list[float] = []
        cpu0 = time.process_time()
        for _ in range(rounds):
            for t in turns:
                c0 = time.thread_time()
                w0 = time.perf_counter()
                decider.decide(t, scorer_name=name)
                walls.append((time.perf_counter() - w0) * 1e6)
                cpus.append((time.thread_time() - c0) * 1e6)
        cpu = (time.process_time() - cpu0) * 1e6 / len(walls)
        results[name] = cpu
        # Wall time includes waiting for the shared cores; thread CPU time is the decision's own cost on one core.
        print(f"  {name:<17} decisions={len(walls):6d}  wall p50 {pct(walls, 0.5):7.1f} µs  p95 {pct(walls, 0.95):7.1f}"
              f" µs  p99 {pct(walls, 0.99):7.1f} µs | CPU p50 {pct(cpus, 0.5):7.1f} µs  p99 {pct(cpus, 0.99):7.1f} µs"
              f"  mean {cpu:7.1f} µs")
    print(f"  ratio default/seed (mean CPU): {results[DEFAULT_SCORER] / results[SEED_SCORER]:.2f}x")


def bench_answer_scoring(rounds: int) -> None:
    try:
        rows = [e for d in load_all() for e in d.split()[1] if e.responses[0] and e.responses[1]]
    except DataMissing as err:
        print(f"  (routing data missing, answer scoring skipped: {err})")
        return
    scorer = AnswerScorer(load_learned_payload())
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(rounds):
        for e in rows:
            c0 = time.thread_time()
            w0 = time.perf_counter()
            scorer.probability(e.text, e.responses[0], e.responses[1], 0.6, 0.7)
            walls.append((time.perf_counter() - w0) * 1e3)
            cpus.append((time.thread_time() - c0) * 1e3)
    print(f"  answer scorer: {len(walls)} scorings of held-out RouterBench answers, wall p50 {pct(walls, 0.5):.3f} ms"
          f"  p99 {pct(walls, 0.99):.3f} ms | CPU p50 {pct(cpus, 0.5):.3f} ms  p99 {pct(cpus, 0.99):.3f} ms")


async def bench_route_rpc(duration_s: float, concurrencies: Sequence[int]) -> None:
    """The router runs in its own process (`python -m frugal.router`), the callers in this one."""
    tmp = Path(tempfile.mkdtemp(prefix="frugal-router-bench-"))
    redis = EmbeddedRedis(tmp / "redis", free_port())
    redis.start()
    port = free_port()
    env = {**os.environ, "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(port), "METRICS_PORT": "0",
           "REDIS_URL": redis.url, "GEMINI_API_KEY": "", "GOOGLE_API_KEY": "", "ANTHROPIC_API_KEY": "",
           "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "frugal.router", env=env)
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", 60, alive=lambda: proc.returncode is None)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            md = (("x-tenant-id", "bench"), ("x-session-id", "bench-1"))
            reqs = [router_pb2.RouteRequest(turn=router_pb2.TurnInput(text=t)) for t in TURNS]
            for r in reqs:
                await stub.Route(r, metadata=md)  # warm-up
            for conc in concurrencies:
                lat: list[float] = []
                stop_at = time.perf_counter() + duration_s

                async def worker(i: int, lat: list[float] = lat, stop_at: float = stop_at) -> None:
                    n = i
                    while time.perf_counter() < stop_at:
                        t0 = time.perf_counter()
                        await stub.Route(reqs[n % len(reqs)], metadata=md)
                        lat.append((time.perf_counter() - t0) * 1000)
                        n += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(worker(i) for i in range(conc)))
                elapsed = time.perf_counter() - t0
                print(f"  concurrency {conc:3d}: {len(lat) / elapsed:8.0f} Route/s  latency p50 "
                      f"{pct(lat, 0.5):6.2f} ms  p95 {pct(lat, 0.95):6.2f} ms  p99 {pct(lat, 0.99):6.2f} ms "
                      f"({len(lat)} calls in {elapsed:.1f}s)")
            print(f"  router process resident memory after the runs: {rss_mb(str(proc.pid)):.0f} MB")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def bench_cascade_ttft(turns: int) -> None:
    """Time to first token with and without the cascade, over real gRPC in this process, with the Gemini and
    Anthropic emulators standing in for the providers (a fixed first-chunk latency and chunk pace, so the
    difference is what the cascade's hold adds: the cheap answers' full duration plus scoring)."""
    from frugal.api.router.v1 import router_pb2 as pb
    from frugal.devkit.emulators.anthropic import AnthropicEmulator
    from frugal.devkit.emulators.gemini import GeminiEmulator
    from frugal.devkit.routing.conversational import load_turns
    from frugal.router.config import Settings
    from frugal.router.server import build_app

    latency, pace, chunk = 0.25, 0.02, 16
    tmp = Path(tempfile.mkdtemp(prefix="frugal-router-ttft-"))
    redis = EmbeddedRedis(tmp / "redis", free_port())
    redis.start()
    gemini = GeminiEmulator(latency_s=latency, chunk_delay_s=pace, chunk_chars=chunk)
    claude = AnthropicEmulator(latency_s=latency, chunk_delay_s=pace, chunk_chars=chunk)
    await gemini.start()
    await claude.start()
    app = None
    try:
        values: dict[str, Any] = {
            "grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "redis_url": redis.url,
            "gemini_api_key": "bench", "gemini_base_url": gemini.base_url, "anthropic_api_key": "bench",
            "anthropic_base_url": claude.base_url, "rate_limits_enabled": False, "log_level": "WARNING",
        }
        settings = Settings(**values)
        app = await build_app(settings)
        port = await app.start()
        decider = Decider(scorers_once(), default_catalog(), TierMix(0.6, 0.25, 0.15),
                          provider_of=lambda tier: ("offline", True))
        # Voice turns in a cascade band, else ARC-style probes (learned-v1's bands are fitted where the training
        # rows carry answers: RouterBench-like prompts).
        from frugal.devkit.routing.probes import few_shot_prompts

        band = [t for t in [x.text for x in load_turns()] + few_shot_prompts()
                if decider.decide(TurnText(t)).cascade][:turns]
        md = (("x-tenant-id", "bench"), ("x-session-id", "ttft"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)

            async def ttft(text: str, scorer: str) -> tuple[float, int]:
                done = None
                async for msg in stub.Respond(pb.RespondRequest(turn=pb.TurnInput(text=text), scorer=scorer,
                                                                skip_rag=True, skip_vision=True), metadata=md):
                    if msg.WhichOneof("payload") == "completed":
                        done = msg.completed
                assert done is not None
                return done.first_token_latency_ms, done.tier

            with_c, without, kept = [], [], 0
            for text in band:
                ms, tier = await ttft(text, "")
                with_c.append(ms)
                kept += tier == 2  # TIER_STANDARD: the held standard answer was kept
                without.append((await ttft(text, "hybrid-v2"))[0])
        if not band:
            print("  no bundled turn or probe falls in the cascade band")
            return
        added = [a - b for a, b in zip(with_c, without, strict=True)]
        print(f"  {len(band)} cascaded turns, voice or ARC-style (emulated providers: first chunk after {latency}s, "
              f"{chunk} chars every {pace}s): TTFT with cascade p50 {pct(with_c, 0.5):.0f} ms p95 "
              f"{pct(with_c, 0.95):.0f} ms; without (hybrid-v2, direct) p50 {pct(without, 0.5):.0f} ms; "
              f"added p50 {pct(added, 0.5):.0f} ms p95 {pct(added, 0.95):.0f} ms; standard answer kept "
              f"{kept}/{len(band)}")
    finally:
        if app is not None:
            await app.stop(0.5)
        await gemini.aclose()
        await claude.aclose()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    # One core, one BLAS thread: the decision budget is per core.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    limit_blas_threads(1)
    print(f"== pinned to CPU {sorted(os.sched_getaffinity(0))} with one BLAS thread; the machine's cores are shared, "
          f"so tails vary between runs (load average {os.getloadavg()[0]:.1f})")
    print("== decision latency, in-process (conversational turns, 2 to 1,000 characters)")
    bench_decisions(TURNS, rounds=200 if args.quick else 2000)
    try:
        prompts = [e.text for d in load_all() for e in d.split()[1]]
    except DataMissing as err:
        print(f"  (routing data missing, benchmark prompts skipped: {err})")
    else:
        if args.quick:
            prompts = prompts[::5]
        print(f"== decision latency, in-process ({len(prompts)} held-out benchmark prompts, "
              f"mean {statistics.mean(len(p) for p in prompts):.0f} characters)")
        bench_decisions(prompts, rounds=1 if args.quick else 3)
    print("== cascade answer scoring, in-process")
    bench_answer_scoring(rounds=1 if args.quick else 5)
    print("== cascade: added time to first token (Respond over gRPC, emulated providers)")
    asyncio.run(bench_cascade_ttft(8 if args.quick else 30))
    print("== Route RPC throughput on loopback (router in its own process, default scorer, callers here)")
    asyncio.run(bench_route_rpc(3.0 if args.quick else 10.0, (1, 8, 32)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
