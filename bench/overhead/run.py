"""What the mesh adds to time-to-first-token, side by side with LiteLLM proxy, in one run.

    uv run python bench/overhead/run.py [--quick] [--rounds N] [--concurrency 1,10,50] [--no-litellm]
                                        [--baseline-src DIR] [--profile-router FILE]

One zero-latency Anthropic emulator (frugal.devkit.emulators, its own process) is called four ways:
  direct       the anthropic SDK (its aiohttp transport, as the router), straight to the emulator (the floor
               every other figure is measured from)
  relay        the same client -> a bare grpc.aio `Respond` that only relays the SDK stream (bench/overhead/relay.py:
               no interceptor, admission, decision, context or cost record): the floor of any grpc.aio mesh here
  mesh         the gateway's router client -> router `Respond` -> anthropic SDK -> emulator, context off
  mesh+ctx     the same with RAG (pgvector + BM25, warm) and vision context (Redis) on
  litellm      LiteLLM proxy (installed by this bench into its own venv from PyPI, never a project
               dependency) -> emulator, streamed through its OpenAI-compatible endpoint
  mesh@base    (with --baseline-src DIR) the mesh through a second router run from an older source tree (DIR's
               libs/common/src and services/router/src first on PYTHONPATH, e.g. `git archive <commit>` of
               them), same Redis, billing, rag, vision-dedup and emulator: before/after figures in one machine
               state; mesh+ctx@base the same with context on
The tenant is pinned to premium (claude-sonnet-4-6) so all of them reach the same emulator route. Systems are
interleaved in rounds (shuffled per round) so machine drift hits all equally. Overheads are per-round paired
differences against `direct` (turn i of a system minus turn i of direct in the same round). CPU is the
user+system time of each proxy's processes (router, plus rag and vision-dedup when context is on; LiteLLM's
process tree) while that system ran, per 1,000 turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LITELLM_SPEC = "litellm[proxy]"
LITELLM_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "frugal-mesh" / "litellm-venv"
MODEL = "claude-sonnet-4-6"
TENANT = "bench_overhead"
PROMPTS = (
    "How do I reset my SSO configuration?",
    "What does the pro plan cost per seat?",
    "Can you summarise what is on my screen?",
    "Why did my last deployment fail?",
    "Which regions do you support for data residency?",
)
MAX_TOKENS = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    ttft_ms: float
    total_ms: float


@dataclass
class Series:
    samples: dict[int, list[list[Sample]]] = field(default_factory=dict)  # concurrency -> rounds -> turns
    cpu_s: dict[int, float] = field(default_factory=dict)
    turns: dict[int, int] = field(default_factory=dict)
    errors: int = 0


# ---------------------------------------------------------------------------------------------- processes
def _tree_cpu_seconds(root_pids: list[int]) -> float:
    """user+system seconds of the given processes and all their descendants (read from /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    wanted = set(root_pids)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                grew = True
    return sum(ticks.get(pid, 0) for pid in wanted) / CLK_TCK


def ensure_litellm(install: bool) -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    if not install:
        return None
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} (its own venv; not a project dependency) ...", flush=True)
    try:
        LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
        if os.access(uv, os.X_OK):
            subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(LITELLM_VENV)], check=True, timeout=300)
            subprocess.run([uv, "pip", "install", "-q", "-p", str(LITELLM_VENV / "bin" / "python"), LITELLM_SPEC],
                           check=True, timeout=900)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300)
            subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"litellm: skipped, could not install {LITELLM_SPEC} from PyPI ({err})", flush=True)
        shutil.rmtree(LITELLM_VENV, ignore_errors=True)
        return None
    return exe if exe.exists() else None


def start_announcing(
    cmd: list[str], what: str, *, new_session: bool = False
) -> tuple[subprocess.Popen[str], list[str]]:
    """Starts a helper process that prints `ready <fields...>` once serving; returns it and the fields."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=new_session)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")
    return proc, line.split()[1:]


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    proc, fields = start_announcing([sys.executable, "-m", "frugal.devkit.emulators.serve"], "emulator")
    urls = dict(part.split("=", 1) for part in fields)
    return proc, urls["anthropic"]


def start_relay(anthropic_url: str) -> tuple[subprocess.Popen[str], str]:
    proc, fields = start_announcing([sys.executable, str(Path(__file__).with_name("relay.py")), "--anthropic-url",
                                     anthropic_url], "relay", new_session=True)
    return proc, fields[0]


def start_litellm(exe: Path, anthropic_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    from frugal.devkit.devstack import free_port

    port = free_port()
    key = "sk-bench-" + uuid.uuid4().hex
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"anthropic/{MODEL}", "api_base": anthropic_url, "api_key": "bench-key"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False},
    }))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key,
           "LITELLM_LOG": "ERROR"}
    log = (workdir / "litellm.log").open("wb")
    proc = subprocess.Popen([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", key


def start_baseline_router(mesh: object, src: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second router (context off) from the source tree `src`, on its own ports, beside the mesh's."""
    from frugal.common.healthcheck import wait_serving
    from frugal.devkit.devstack import free_port
    from frugal.devkit.localmesh import LocalMesh

    assert isinstance(mesh, LocalMesh)
    roots = [src / "libs" / "common" / "src", src / "services" / "router" / "src"]
    missing = [str(r) for r in roots if not (r / "frugal").is_dir()]
    if missing:
        raise SystemExit(f"--baseline-src: no frugal sources in {', '.join(missing)}")
    port = free_port()
    env = mesh.env_for("router", None)
    env.update({"GRPC_PORT": str(port), "METRICS_PORT": str(free_port()),
                "PYTHONPATH": os.pathsep.join([*map(str, roots), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    log = (workdir / "router-base.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "frugal.router"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_serving(f"127.0.0.1:{port}", 90, alive=lambda: proc.poll() is None)
    return proc, f"127.0.0.1:{port}"


def start_profiler(svg: str | None, pid: int, *, native: bool = False) -> subprocess.Popen[bytes] | None:
    if not svg:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy is not installed (uv tool install py-spy): no profile")
        return None
    # --native (Cython and C frames: gRPC's core, protobuf) cannot be sampled without pausing the process.
    mode = ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen([exe, "record", "-p", str(pid), "-o", svg, "-f", "raw", "-r", "250", *mode])


# ---------------------------------------------------------------------------------------------- clients
Turn = Callable[[str], Awaitable[Sample]]


def direct_client(anthropic_url: str) -> tuple[Turn, Callable[[], Awaitable[None]]]:
    import anthropic

    # The transport the router uses (the SDK's aiohttp one): the floor is the cheapest call, so the overhead is
    # what the mesh adds, not a difference of HTTP stacks (it also keeps this client from being the bottleneck).
    client = anthropic.AsyncAnthropic(api_key="bench-key", base_url=anthropic_url, max_retries=0, timeout=30.0,
                                      http_client=anthropic.DefaultAioHttpClient(timeout=30.0))

    async def turn(prompt: str) -> Sample:
        t0 = time.perf_counter()
        first: float | None = None
        async with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS,
                                          messages=[{"role": "user", "content": prompt}]) as stream:
            async for _text in stream.text_stream:
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        return Sample(((first or end) - t0) * 1000, (end - t0) * 1000)

    return turn, client.close


def mesh_client(router_addr: str, *, context: bool) -> tuple[Turn, Callable[[], Awaitable[None]]]:
    from frugal.api.router.v1 import router_pb2, router_pb2_grpc
    from frugal.common.grpc_client import create_channel, outgoing_metadata

    channel = create_channel(router_addr)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    session = "bench-vision" if context else "bench-plain"

    async def turn(prompt: str) -> Sample:
        request = router_pb2.RespondRequest(
            turn=router_pb2.TurnInput(text=prompt), turn_id=uuid.uuid4().hex, skip_rag=not context,
            skip_vision=not context, max_output_tokens=MAX_TOKENS)
        md = outgoing_metadata(tenant_id=TENANT, session_id=session)
        t0 = time.perf_counter()
        first: float | None = None
        completed = False
        async for msg in stub.Respond(request, timeout=30, metadata=md):
            kind = msg.WhichOneof("payload")
            if kind == "delta" and first is None:
                first = time.perf_counter()
            elif kind == "completed":
                completed = True
        end = time.perf_counter()
        if not completed or first is None:
            raise RuntimeError("router stream ended without an answer")
        return Sample((first - t0) * 1000, (end - t0) * 1000)

    async def close() -> None:
        await channel.close()

    return turn, close


def litellm_client(base: str, key: str) -> tuple[Turn, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(base_url=base, timeout=30.0, headers={"authorization": f"Bearer {key}"},
                               limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))

    async def turn(prompt: str) -> Sample:
        body = {"model": MODEL, "stream": True, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": prompt}]}
        t0 = time.perf_counter()
        first: float | None = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if first is None:
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter()
        end = time.perf_counter()
        if first is None:
            raise RuntimeError("litellm stream carried no content")
        return Sample((first - t0) * 1000, (end - t0) * 1000)

    return turn, client.aclose


# ---------------------------------------------------------------------------------------------- mesh setup
async def prepare_tenant(billing_addr: str, rag_addr: str, vision_addr: str) -> None:
    from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
    from frugal.api.common.v1 import common_pb2
    from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
    from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
    from frugal.common.grpc_client import create_channel, outgoing_metadata

    policy = billing_pb2.TenantPolicy(
        tenant_id=TENANT, display_name="overhead bench", plan="bench", monthly_budget_usd=1_000_000.0,
        requests_per_minute=2_000_000_000, tokens_per_minute=2_000_000_000, knowledge_base_enabled=True,
        pinned_tier=common_pb2.TIER_PREMIUM)
    async with create_channel(billing_addr) as ch:
        await billing_pb2_grpc.BillingServiceStub(ch).UpsertTenant(
            billing_pb2.UpsertTenantRequest(policy=policy),
            metadata=outgoing_metadata(tenant_id=TENANT, session_id="bench-setup"), timeout=30)
    async with create_channel(rag_addr) as ch:
        stub = rag_pb2_grpc.RagServiceStub(ch)
        for path in sorted((ROOT / "demo" / "kb").glob("*.md")):
            await stub.IngestDocument(
                rag_pb2.IngestDocumentRequest(document_id=f"kb/{path.name}", title=path.stem,
                                              content_type="text/markdown", content=path.read_bytes()),
                metadata=outgoing_metadata(tenant_id=TENANT, session_id="bench-setup"), timeout=300)
    # Two different screens, so vision-dedup keeps both and its (offline) model describes them.
    width, height = 320, 180

    def frame(seq: int, shade: int) -> vision_pb2.StreamFramesRequest:
        y = bytes([shade]) * (width * height // 2) + bytes([255 - shade]) * (width * height // 2)
        uv = bytes([128]) * ((width // 2) * (height // 2))
        return vision_pb2.StreamFramesRequest(frame=vision_pb2.Frame(
            format=vision_pb2.FRAME_FORMAT_I420, width=width, height=height, timestamp_ms=seq * 4000,
            track_id="screen", sequence=seq, data=y + uv + uv))

    async with create_channel(vision_addr) as ch:
        vstub = vision_pb2_grpc.VisionServiceStub(ch)
        md = outgoing_metadata(tenant_id=TENANT, session_id="bench-vision")

        async def frames() -> AsyncIterator[vision_pb2.StreamFramesRequest]:
            for seq, shade in enumerate((20, 230), start=1):
                yield frame(seq, shade)
                await asyncio.sleep(1.0)
            await asyncio.sleep(4.0)  # let the analyses complete before the stream closes

        async for _ in vstub.StreamFrames(frames(), metadata=md, timeout=60):
            pass
        for _ in range(100):
            ctx = await vstub.GetContext(vision_pb2.GetContextRequest(session_id="bench-vision"), metadata=md,
                                         timeout=5)
            if ctx.analyses:
                break
            await asyncio.sleep(0.1)
        else:
            print("warning: vision-dedup produced no analysis; mesh+ctx runs with empty vision context")


async def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False


# ---------------------------------------------------------------------------------------------- figures
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def fmt3(values: list[float]) -> str:
    return f"{pct(values, 0.5):7.2f} {pct(values, 0.95):7.2f} {pct(values, 0.99):7.2f}"


async def run_round(turn: Turn, concurrency: int, offset: int) -> list[Sample]:
    prompts = [PROMPTS[(offset + i) % len(PROMPTS)] for i in range(concurrency)]
    return list(await asyncio.gather(*(turn(p) for p in prompts)))


async def bench(args: argparse.Namespace) -> int:
    from frugal.devkit.devstack import EmbeddedPostgres, EmbeddedRedis, free_port
    from frugal.devkit.localmesh import LocalMesh

    litellm_exe = None if args.no_litellm else ensure_litellm(install=True)
    if litellm_exe is None and not args.no_litellm:
        print("litellm: skipped (not installable here); figures below compare direct and mesh only")
    with tempfile.TemporaryDirectory(prefix="frugal-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)  # as root, PostgreSQL runs as another user who must reach its data dir
        pg = EmbeddedPostgres(tmp / "pg", free_port())
        redis = EmbeddedRedis(tmp / "redis", free_port())
        pg.start()
        redis.start()
        emu_proc, anthropic_url = start_emulator()
        litellm_proc: subprocess.Popen[bytes] | None = None
        relay_proc: subprocess.Popen[str] | None = None
        base_proc: subprocess.Popen[bytes] | None = None
        mesh = LocalMesh.on_free_ports(
            pg.admin_dsn, redis.url, log_dir=tmp / "logs", services=("billing", "rag", "vision-dedup", "router"),
            extra_env={"ANTHROPIC_API_KEY": "bench-key", "ANTHROPIC_BASE_URL": anthropic_url, "LOG_LEVEL": "WARNING",
                       "DEFAULT_REQUESTS_PER_MINUTE": "2000000000", "DEFAULT_TOKENS_PER_MINUTE": "2000000000"})
        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            print("starting billing, rag, vision-dedup, router (embedded Postgres + Redis) ...", flush=True)
            mesh.start()
            addr = {n: f"127.0.0.1:{p}" for n, p in mesh.ports.items()}
            await prepare_tenant(addr["billing"], addr["rag"], addr["vision-dedup"])
            await asyncio.sleep(3.0)  # tenant state published to Redis and cached by the router
            systems: dict[str, Turn] = {}
            pids: dict[str, list[int]] = {}
            systems["direct"], close = direct_client(anthropic_url)
            closers.append(close)
            pids["direct"] = []
            relay_proc, relay_addr = start_relay(anthropic_url)
            systems["relay"], close = mesh_client(relay_addr, context=False)
            closers.append(close)
            pids["relay"] = [relay_proc.pid]
            systems["mesh"], close = mesh_client(addr["router"], context=False)
            closers.append(close)
            pids["mesh"] = [mesh.procs["router"].pid]
            systems["mesh+ctx"], close = mesh_client(addr["router"], context=True)
            closers.append(close)
            pids["mesh+ctx"] = [mesh.procs[n].pid for n in ("router", "rag", "vision-dedup")]
            if args.baseline_src:
                base_proc, base_addr = start_baseline_router(mesh, Path(args.baseline_src), tmp)
                systems["mesh@base"], close = mesh_client(base_addr, context=False)
                closers.append(close)
                pids["mesh@base"] = [base_proc.pid]
                systems["mesh+ctx@base"], close = mesh_client(base_addr, context=True)
                closers.append(close)
                pids["mesh+ctx@base"] = [base_proc.pid, *(mesh.procs[n].pid for n in ("rag", "vision-dedup"))]
            if litellm_exe is not None:
                litellm_proc, base, key = start_litellm(litellm_exe, anthropic_url, tmp)
                if await wait_http(f"{base}/health/liveliness", litellm_proc):
                    systems["litellm"], close = litellm_client(base, key)
                    closers.append(close)
                    pids["litellm"] = [litellm_proc.pid]
                else:
                    tail = (tmp / "litellm.log").read_text(errors="replace")[-800:]
                    print(f"litellm: skipped, the proxy did not start (log tail: {tail})")
            # Warm-up: channels, SDK clients, caches (query embeddings, tenant state), code paths.
            for name, turn in systems.items():
                for i in range(args.warmup):
                    try:
                        await run_round(turn, 1, i)
                    except Exception as err:  # noqa: BLE001 - a system that cannot answer is reported, not fatal
                        raise SystemExit(f"{name}: warm-up turn failed: {err!r}") from err
            profiler = start_profiler(args.profile_router, mesh.procs["router"].pid, native=args.profile_native)
            series = {name: Series() for name in systems}
            rng = random.Random(7)
            for conc in args.concurrency:
                rounds = max(3, args.rounds // conc) if conc > 1 else args.rounds
                for r in range(rounds):
                    order = list(systems)
                    rng.shuffle(order)
                    for name in order:
                        cpu0 = _tree_cpu_seconds(pids[name]) if pids[name] else 0.0
                        try:
                            samples = await run_round(systems[name], conc, r)
                        except Exception as err:  # noqa: BLE001 - counted and shown
                            series[name].errors += 1
                            print(f"{name}: round failed at concurrency {conc}: {err!r}", flush=True)
                            samples = []
                        cpu1 = _tree_cpu_seconds(pids[name]) if pids[name] else 0.0
                        s = series[name]
                        s.samples.setdefault(conc, []).append(samples)
                        s.cpu_s[conc] = s.cpu_s.get(conc, 0.0) + (cpu1 - cpu0)
                        s.turns[conc] = s.turns.get(conc, 0) + len(samples)
            if profiler is not None:
                profiler.send_signal(2)
                profiler.wait(60)
                print(f"router profile written to {args.profile_router}")
            report(series, args.concurrency)
        finally:
            for close in closers:
                await close()
            if litellm_proc is not None:
                litellm_proc.terminate()
                try:
                    litellm_proc.wait(10)
                except subprocess.TimeoutExpired:
                    litellm_proc.kill()
            if relay_proc is not None:
                relay_proc.terminate()
                relay_proc.wait(10)
            if base_proc is not None:
                base_proc.terminate()
                try:
                    base_proc.wait(10)
                except subprocess.TimeoutExpired:
                    base_proc.kill()
            mesh.stop()
            emu_proc.terminate()
            emu_proc.wait(10)
            redis.stop()
            pg.stop()
    return 0


def paired_ttft_differences(rounds: list[list[Sample]], base_rounds: list[list[Sample]]) -> list[float]:
    """Per round, the k-th fastest TTFT of one system minus the k-th fastest of the other."""
    diffs: list[float] = []
    for mine, base in zip(rounds, base_rounds, strict=False):
        mine_sorted = sorted(x.ttft_ms for x in mine)
        base_sorted = sorted(x.ttft_ms for x in base)
        diffs.extend(a - b for a, b in zip(mine_sorted, base_sorted, strict=False))
    return diffs


def report(series: dict[str, Series], concurrencies: list[int]) -> None:
    print()
    print("Time to first token and total time, ms (p50 p95 p99); overhead = paired difference vs direct, per turn")
    for conc in concurrencies:
        direct_rounds = series["direct"].samples.get(conc, [])
        print(f"\n--- concurrency {conc} ({sum(len(r) for r in direct_rounds)} direct turns)")
        print(f"{'system':13} {'TTFT p50     p95     p99':>24} | {'total p50   p95     p99':>24} | "
              f"{'TTFT overhead p50 p95 p99':>26} | {'CPU s/1k turns':>14} | errors")
        overhead_p95: dict[str, float] = {}
        for name, s in series.items():
            rounds = s.samples.get(conc, [])
            ttft = [x.ttft_ms for r in rounds for x in r]
            total = [x.total_ms for r in rounds for x in r]
            diffs = paired_ttft_differences(rounds, direct_rounds)
            turns = s.turns.get(conc, 0)
            cpu = f"{s.cpu_s.get(conc, 0.0) / turns * 1000:14.2f}" if turns and name != "direct" else f"{'-':>14}"
            over = fmt3(diffs) if name != "direct" else f"{'-':>23}"
            if name != "direct":
                overhead_p95[name] = pct(diffs, 0.95)
            print(f"{name:13} {fmt3(ttft):>24} | {fmt3(total):>24} | {over:>26} | {cpu} | {s.errors}")
        # The arithmetic of a CPU-bound proxy: N simultaneous turns need N x (CPU per turn) of CPU; with C cores
        # (shared here with the emulator and this client) the last first token waits at least about that / C.
        cores = os.cpu_count() or 1
        for name in ("relay", "mesh", "mesh@base"):
            ms = series.get(name)
            if ms is not None and conc > 1 and ms.turns.get(conc):
                per_turn_ms = ms.cpu_s.get(conc, 0.0) / ms.turns[conc] * 1000
                print(f"{name}: CPU {per_turn_ms:.2f} ms/turn x {conc} turns / {cores} cores = "
                      f"{per_turn_ms * conc / cores:.0f} ms of queueing for the last turn of a round, at best "
                      f"(target p95 overhead at 50: 15 ms needs <= {15 * cores / 50:.2f} ms CPU per turn)")
        if "relay" in series and "mesh" in series:
            own = paired_ttft_differences(series["mesh"].samples.get(conc, []), series["relay"].samples.get(conc, []))
            if own:
                print(f"mesh over the bare relay (the router's own work; paired per round): p50 p95 p99 {fmt3(own)} ms")
        for now, then in (("mesh", "mesh@base"), ("mesh+ctx", "mesh+ctx@base")):
            if now in series and then in series:
                delta = paired_ttft_differences(series[now].samples.get(conc, []), series[then].samples.get(conc, []))
                if delta:
                    print(f"{now} minus {then} (paired per round; negative: this tree is faster): p50 p95 p99 "
                          f"{fmt3(delta)} ms")
        if "litellm" in overhead_p95:
            lite = overhead_p95["litellm"]
            for name in ("relay", "mesh", "mesh+ctx", "mesh@base", "mesh+ctx@base"):
                if name in overhead_p95 and lite > 0:
                    print(f"{name} p95 overhead / litellm p95 overhead = {overhead_p95[name] / lite:.2f} "
                          f"(target <= 0.33)")
    print("\nTargets: mesh TTFT overhead p95 <= 5 ms at concurrency 1 and <= 15 ms at 50 (context off); "
          "<= 25 ms at concurrency 1 with RAG and vision context on.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few rounds, concurrency 1 and 10 (smoke run)")
    p.add_argument("--rounds", type=int, default=200, help="rounds at concurrency 1 (fewer at higher concurrency)")
    p.add_argument("--concurrency", default="1,10,50")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy comparison")
    p.add_argument("--baseline-src", metavar="DIR",
                   help="also run a router from this older source tree (before/after in one run)")
    p.add_argument("--profile-router", metavar="FILE",
                   help="record the router with py-spy (if installed): collapsed stacks into FILE")
    p.add_argument("--profile-native", action="store_true",
                   help="with --profile-router: native frames too (pauses the router per sample: slower figures)")
    args = p.parse_args()
    # As in scripts/demo.py: gRPC core's "skipping fork() handlers" INFO lines (pg_ctl run while gRPC threads
    # are parked) are noise; ERROR is gRPC's documented default, set before gRPC loads; an explicit one wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    if args.quick:
        args.rounds, args.concurrency, args.warmup = 20, [1, 10], 5
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
