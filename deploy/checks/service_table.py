"""The one service table (frugal.common.service_table) against everything that repeats it: the Kubernetes
manifests, docker-compose.yml, the Istio routes and the docs table in deploy/README.md."""

from __future__ import annotations

import re
from pathlib import Path

from deploy.checks.base import DEPLOY, Obj, find, obj_id, of_kind, pod_spec, service_deployments
from frugal.common import service_table
from frugal.common.service_table import SERVICES

DOCS = DEPLOY / "README.md"
DOCS_BEGIN = "<!-- service-table: generated, `uv run python -m deploy.checks --docs` -->"
DOCS_END = "<!-- /service-table -->"


def docs_table() -> str:
    rows = ["| service | run | gRPC | metrics | database role |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {s.name} | `python -m {s.package}` | {s.grpc_port} | {s.metrics_port} | {s.db_role or '-'} |"
             for s in SERVICES]
    return "\n".join(rows)


def check_docs(path: Path = DOCS) -> list[str]:
    text = path.read_text(encoding="utf-8")
    m = re.search(re.escape(DOCS_BEGIN) + r"\n(.*?)\n" + re.escape(DOCS_END), text, flags=re.S)
    if m is None:
        return [f"{path.name}: no service table between {DOCS_BEGIN!r} and {DOCS_END!r}"]
    if m.group(1).strip() != docs_table():
        return [f"{path.name}: the service table is stale; regenerate it with `uv run python -m deploy.checks --docs`"]
    return []


def write_docs(path: Path = DOCS) -> None:
    text = path.read_text(encoding="utf-8")
    block = f"{DOCS_BEGIN}\n{docs_table()}\n{DOCS_END}"
    pattern = re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END)
    text = re.sub(pattern, lambda _m: block, text, flags=re.S) if DOCS_BEGIN in text else text + "\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def check_readme(path: Path = DEPLOY.parent / "README.md") -> list[str]:
    """The top-level README's services table (`| name | `python -m pkg` | ... | grpc | metrics |`)."""
    problems: list[str] = []
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| ([a-z-]+) \| `python -m [\w.]+` \|.*$",
                                                          path.read_text(encoding="utf-8"), flags=re.M)}
    for spec in SERVICES:
        row = rows.get(spec.name)
        if row is None:
            problems.append(f"{path.name}: the services table has no row for {spec.name}")
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        if f"`python -m {spec.package}`" != cells[1] or cells[-2:] != [str(spec.grpc_port), str(spec.metrics_port)]:
            problems.append(f"{path.name}: row {spec.name} must say `python -m {spec.package}`, gRPC "
                            f"{spec.grpc_port}, metrics {spec.metrics_port}")
    return problems


def check_verify_script(path: Path = DEPLOY.parent / "scripts" / "verify-deployment") -> list[str]:
    m = re.search(r"^SERVICES=\(([^)]*)\)", path.read_text(encoding="utf-8"), flags=re.M)
    names = m.group(1).split() if m else []
    want = [s.name for s in SERVICES]
    return [] if sorted(names) == sorted(want) else [f"{path.name}: SERVICES=({' '.join(names)}) but the table has "
                                                     f"{' '.join(want)}"]


def check_manifests(objs: list[Obj]) -> list[str]:
    problems: list[str] = []
    deployments = {str(d["metadata"]["name"]): d for d in service_deployments(objs)}
    if set(deployments) != {s.name for s in SERVICES}:
        problems.append(f"service Deployments are {sorted(deployments)}, the table has {[s.name for s in SERVICES]}")
    for spec in SERVICES:
        dep = deployments.get(spec.name)
        if dep is None:
            continue
        main = next((c for c in pod_spec(dep).get("containers", []) if c.get("name") == spec.name), None)
        if main is None:
            problems.append(f"{obj_id(dep)}: no container named {spec.name!r}")
            continue
        ports = {p.get("name"): p.get("containerPort") for p in main.get("ports", [])}
        if ports.get("grpc") != spec.grpc_port or ports.get("metrics") != spec.metrics_port:
            problems.append(f"{obj_id(dep)}: ports must be grpc={spec.grpc_port}, metrics={spec.metrics_port} "
                            f"(got {ports})")
        env = {e["name"]: e.get("value") for e in main.get("env", [])}
        if env.get("GRPC_PORT") != str(spec.grpc_port) or env.get("METRICS_PORT") != str(spec.metrics_port):
            problems.append(f"{obj_id(dep)}: GRPC_PORT/METRICS_PORT must be {spec.grpc_port}/{spec.metrics_port}")
        for probe in ("startupProbe", "readinessProbe"):
            if ((main.get(probe) or {}).get("grpc") or {}).get("port") != spec.grpc_port:
                problems.append(f"{obj_id(dep)}: {probe} must be a gRPC probe on {spec.grpc_port}")
        if pod_spec(dep).get("serviceAccountName") != spec.name:
            problems.append(f"{obj_id(dep)}: serviceAccountName must be {spec.name!r}")
        svc = find(objs, "Service", spec.name)
        sports = {p.get("name"): p.get("port") for p in (svc or {}).get("spec", {}).get("ports", [])}
        if sports.get("grpc") != spec.grpc_port or sports.get("metrics") != spec.metrics_port:
            problems.append(f"Service {spec.name}: ports must be grpc={spec.grpc_port}, metrics={spec.metrics_port}")
    for cm in of_kind(objs, "ConfigMap"):
        data = cm.get("data") or {}
        for var, want in service_table.addresses().items():
            if var in data and data[var] != want:
                problems.append(f"{obj_id(cm)}: {var}={data[var]} but the service table says {want}")
    return problems


def check_compose(doc: Obj) -> list[str]:
    problems: list[str] = []
    services = doc.get("services") or {}
    for spec in SERVICES:
        svc = services.get(spec.name)
        if svc is None:
            problems.append(f"compose: service {spec.name!r} is missing")
            continue
        env = svc.get("environment") or {}
        if env.get("GRPC_PORT") != str(spec.grpc_port) or env.get("METRICS_PORT") != str(spec.metrics_port):
            problems.append(f"compose {spec.name}: GRPC_PORT/METRICS_PORT must be {spec.grpc_port}/{spec.metrics_port}")
        for var, want in service_table.addresses().items():
            if env.get(var) != want:
                problems.append(f"compose {spec.name}: {var} must be {want} (got {env.get(var)!r})")
        build = svc.get("build") or {}
        args = build.get("args") or {}
        if str(build.get("dockerfile")) != "deploy/Dockerfile" or args.get("SERVICE") != spec.name or \
                args.get("GRPC_PORT") != str(spec.grpc_port) or args.get("METRICS_PORT") != str(spec.metrics_port):
            problems.append(f"compose {spec.name}: build must be deploy/Dockerfile with SERVICE={spec.name}, "
                            f"GRPC_PORT={spec.grpc_port}, METRICS_PORT={spec.metrics_port}")
        published = {(p.get("target"), str(p.get("published"))) for p in svc.get("ports") or []}
        for port in (spec.grpc_port, spec.metrics_port):
            if (port, str(port)) not in published:
                problems.append(f"compose {spec.name}: must publish {port} on 127.0.0.1:{port}")
    return problems


def check_istio(istio: list[Obj]) -> list[str]:
    problems: list[str] = []
    ports = {s.name: s.grpc_port for s in SERVICES}
    for vs in of_kind(istio, "VirtualService"):
        for route in vs["spec"].get("http", []):
            for dest in route.get("route", []):
                host = str(dest["destination"]["host"]).split(".")[0]
                port = (dest["destination"].get("port") or {}).get("number")
                if host in ports and port not in (None, ports[host]):
                    problems.append(f"{obj_id(vs)}: route {route.get('name')} goes to port {port}, the table says "
                                    f"{ports[host]}")
    metrics = {s.metrics_port for s in SERVICES}
    for pa in of_kind(istio, "PeerAuthentication"):
        for port, cfg in ((pa.get("spec") or {}).get("portLevelMtls") or {}).items():
            if cfg.get("mode") != "STRICT" and int(port) not in metrics:
                problems.append(f"{obj_id(pa)}: port {port} is not a metrics port of the table and must stay STRICT")
    return problems
