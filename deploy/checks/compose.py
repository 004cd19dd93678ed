"""docker-compose.yml, as Docker Compose v2 reads it (tools.compose_config), against what `make up` needs
at run time: start order by health, healthchecks that mean ready, migrations that wait, Redis in its two
roles, the bootstrap step, ports on 127.0.0.1 only, drains that fit in the stop grace period."""

from __future__ import annotations

import re

from deploy.checks.base import Obj, parse_duration_s
from frugal.common import service_table

REQUIRED = ("livekit", "postgres", "redis-events", "redis-cache", "rag-migrate", "billing-migrate", "bootstrap",
            *(s.name for s in service_table.SERVICES))
REDIS_ROLES = {"COST_EVENTS_REDIS_URL": "redis-events", "REDIS_URL": "redis-cache"}
MARGIN_S = 5.0


def start_order(services: dict[str, Obj]) -> list[list[str]]:
    """Waves of services in the order `docker compose up` starts them: a wave starts when every service it
    depends on is healthy / completed / started. Raises ValueError on a dependency cycle."""
    deps = {n: set(s.get("depends_on") or {}) for n, s in services.items()}
    done: set[str] = set()
    waves: list[list[str]] = []
    while len(done) < len(deps):
        wave = sorted(n for n, d in deps.items() if n not in done and d <= done)
        if not wave:
            raise ValueError(f"dependency cycle among {sorted(set(deps) - done)}")
        waves.append(wave)
        done.update(wave)
    return waves


def _command(svc: Obj) -> list[str]:
    return [*(svc.get("entrypoint") or []), *(svc.get("command") or [])]


def _health(svc: Obj) -> str:
    hc = svc.get("healthcheck") or {}
    return "" if hc.get("disable") else " ".join(map(str, hc.get("test") or []))


def check_compose(doc: Obj) -> list[str]:
    services: dict[str, Obj] = doc.get("services") or {}
    problems = [f"service {n!r} is missing" for n in REQUIRED if n not in services]
    try:
        start_order(services)
    except ValueError as err:
        problems.append(str(err))
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if port.get("host_ip") != "127.0.0.1":
                problems.append(f"{name}: port {port.get('published')}/{port.get('protocol')} is published on all "
                                "interfaces; bind it to 127.0.0.1 (dev credentials, no TLS)")
        for dep, cond in (svc.get("depends_on") or {}).items():
            condition = (cond or {}).get("condition")
            target = services.get(dep) or {}
            if condition == "service_healthy" and not _health(target):
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_started" and dep in services:
                problems.append(f"{name} -> {dep}: service_started says nothing about readiness; use service_healthy")
    pg = services.get("postgres") or {}
    if not re.search(r"pg_isready\b.*-h\s*127\.0\.0\.1", _health(pg)):
        problems.append("postgres: the healthcheck must be `pg_isready -h 127.0.0.1 ...` (TCP): over the Unix "
                        "socket it passes while the init-time server runs")
    for comp in ("rag", "billing"):
        mig = services.get(f"{comp}-migrate") or {}
        cmd = _command(mig)
        wait = next((float(a.split("=", 1)[1]) for a in cmd if a.startswith("--wait-seconds=")), None)
        if "frugal.common.migrations" not in cmd or not wait or wait < 30:
            problems.append(f"{comp}-migrate: must run frugal.common.migrations with --wait-seconds >= 30 (the "
                            "database may accept connections after the runner starts)")
        if ((services.get(comp) or {}).get("depends_on") or {}).get(f"{comp}-migrate", {}).get("condition") != \
                "service_completed_successfully":
            problems.append(f"{comp}: must start after {comp}-migrate completed successfully")
    problems += _check_redis(services)
    problems += _check_services(services)
    boot = services.get("bootstrap") or {}
    for dep in ("rag", "billing"):
        if ((boot.get("depends_on") or {}).get(dep) or {}).get("condition") != "service_healthy":
            problems.append(f"bootstrap: must wait for {dep} to be healthy")
    gw_deps = (services.get("media-gateway") or {}).get("depends_on") or {}
    if (gw_deps.get("bootstrap") or {}).get("condition") != "service_completed_successfully":
        problems.append("media-gateway: must start after bootstrap completed (or it joins rooms of no tenant)")
    return problems


def _check_redis(services: dict[str, Obj]) -> list[str]:
    problems: list[str] = []
    events = " ".join(_command(services.get("redis-events") or {}))
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        if flag not in events:
            problems.append(f"redis-events (cost-events stream): command lacks `{flag}`")
    if not any(v.get("type") == "volume" and v.get("target") == "/data"
               for v in (services.get("redis-events") or {}).get("volumes") or []):
        problems.append("redis-events: /data must be a named volume (the stream outlives the container)")
    cache = " ".join(_command(services.get("redis-cache") or {}))
    if not re.search(r"--maxmemory-policy (allkeys|volatile)-", cache) or "--maxmemory " not in cache:
        problems.append("redis-cache: must evict (--maxmemory N --maxmemory-policy allkeys-lru or similar)")
    return problems


def _check_services(services: dict[str, Obj]) -> list[str]:
    problems: list[str] = []
    for spec in service_table.SERVICES:
        svc = services.get(spec.name)
        if svc is None:
            continue
        env = svc.get("environment") or {}
        for var, host in REDIS_ROLES.items():
            if not str(env.get(var, "")).startswith(f"redis://{host}:"):
                problems.append(f"{spec.name}: {var} must point at {host} (got {env.get(var)!r})")
            if host not in (svc.get("depends_on") or {}):
                problems.append(f"{spec.name}: must wait for {host}")
        if "frugal.common.healthcheck" not in _health(svc):
            problems.append(f"{spec.name}: healthcheck must call python -m frugal.common.healthcheck (gRPC health)")
        if str(svc.get("user")) != "1000:1000" or svc.get("read_only") is not True or \
                "ALL" not in (svc.get("cap_drop") or []):
            problems.append(f"{spec.name}: must run read_only, as user 1000:1000, with cap_drop ALL")
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", 10))
        delay = float(env.get("SHUTDOWN_DELAY_SECONDS", 1))
        stop = parse_duration_s(str(svc.get("stop_grace_period") or "10s")) or 0.0
        if stop < delay + grace + MARGIN_S:
            problems.append(f"{spec.name}: stop_grace_period {svc.get('stop_grace_period')} is shorter than the drain "
                            f"(SHUTDOWN_DELAY_SECONDS + SHUTDOWN_GRACE_SECONDS + {MARGIN_S:g} s)")
        if spec.name == "router" and grace < 60:
            problems.append("router: SHUTDOWN_GRACE_SECONDS must cover an answer (PROVIDER_TIMEOUT_S, 60 s)")
    return problems
