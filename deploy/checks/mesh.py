"""What no tool knows about the mesh: every gRPC call the code makes is allowed by an Istio
AuthorizationPolicy and admitted by a NetworkPolicy; every path a policy names exists and is served by the
workload it selects; the mesh never retries a side-effecting method (once the request may have reached a
pod) nor a client stream. The Istio objects' schema is crd.py's."""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy.checks.base import NAMESPACE, PROTOS, SERVICES_DIR, CheckError, Obj, obj_id
from deploy.checks.base import labels_match as _labels_match
from frugal.common.service_table import SERVICES

TRUST_DOMAIN = "cluster.local"
ADMIN_SA = "frugal-admin"
GRPC_PORT = {s.name: s.grpc_port for s in SERVICES}
METRICS_PORTS = {str(s.metrics_port) for s in SERVICES}
# Infrastructure gRPC paths an AuthorizationPolicy may name although they are not in protos/.
INFRA_GRPC_PATHS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
})
# Methods without side effects: the mesh may retry them. Every other method (Respond makes a paid call and
# books it; writes change state; any method added later) is side-effecting, and may be retried only when
# the request never reached a pod.
READ_METHODS = frozenset({"Route", "GetContext", "Retrieve", "ListDocuments", "ResolveTenant", "GetTenantPolicy",
                          "GetBudgetState", "GetUsage"})
SAFE_RETRY_ON = frozenset({"connect-failure", "refused-stream", "reset-before-request"})


# -------------------------------------------------------------------------------------------- protos


@dataclass(frozen=True)
class Rpc:
    service: str  # full name, e.g. frugal.api.rag.v1.RagService
    method: str
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


def proto_rpcs(root: Path = PROTOS) -> dict[str, Rpc]:
    """Every RPC declared under protos/, by gRPC path."""
    out: dict[str, Rpc] = {}
    for proto in sorted(root.rglob("*.proto")):
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", proto.read_text(encoding="utf-8"), flags=re.S)
        pkg = re.search(r"\bpackage\s+([\w.]+)\s*;", text)
        prefix = f"{pkg.group(1)}." if pkg else ""
        for svc in re.finditer(r"\bservice\s+(\w+)\s*\{", text):
            depth, i = 1, svc.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            body = text[svc.end():i]
            for rpc in re.finditer(r"\brpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?",
                                   body):
                r = Rpc(prefix + svc.group(1), rpc.group(1), bool(rpc.group(2)), bool(rpc.group(3)))
                out[r.path] = r
    return out


# ------------------------------------------------------------------------------------ code call scanner


# Operator tooling that ships in a service's package but runs as the admin principal (a person, a one-off pod
# with the frugal-admin service account), never as the service itself: their calls need frugal-admin's ALLOW.
OPERATOR_TOOLING = ("*/cli.py", "*/demo.py")


@dataclass
class CodeScan:
    calls: set[tuple[str, str]] = field(default_factory=set)  # (calling service account, grpc path)
    implements: dict[str, str] = field(default_factory=dict)  # full gRPC service name -> service dir
    where: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def scan_code(services_dir: Path = SERVICES_DIR, rpcs: dict[str, Rpc] | None = None) -> CodeScan:
    """Finds the gRPC methods each service calls and the gRPC services each one implements.

    A service calls `/pkg.Svc/M` when its sources reference `SvcStub` (or `SvcAsyncStub`) anywhere and call
    an attribute named `M` anywhere (stubs are often built in one module and used in another), or when
    they contain the full path as a string literal. It implements `pkg.Svc` when it calls
    `add_SvcServicer_to_server`. Calls made from OPERATOR_TOOLING modules, or to the service's own API
    (its CLI), are attributed to the admin service account."""
    rpcs = proto_rpcs() if rpcs is None else rpcs
    by_short: dict[str, set[str]] = {}
    methods_of: dict[str, set[str]] = {}
    for r in rpcs.values():
        by_short.setdefault(r.service.rsplit(".", 1)[-1], set()).add(r.service)
        methods_of.setdefault(r.service, set()).add(r.method)
    scan = CodeScan()
    per_service: list[tuple[str, set[str], list[tuple[str, str, bool]]]] = []
    for svc_dir in sorted(p for p in services_dir.iterdir() if (p / "src").is_dir()):
        stubs: set[str] = set()
        found: list[tuple[str, str, bool]] = []  # (method or full path, location, operator tooling)
        for py in sorted((svc_dir / "src").rglob("*.py")):
            try:
                tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
            except SyntaxError as err:
                raise CheckError(f"{py}: cannot parse: {err}") from err
            rel = py.relative_to(services_dir.parent).as_posix()
            tooling = any(fnmatch.fnmatch(rel, pat) for pat in OPERATOR_TOOLING)
            for node in ast.walk(tree):
                name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
                if name:
                    m = re.fullmatch(r"(\w+?)(?:Async)?Stub", name)
                    if m and m.group(1) in by_short:
                        stubs.update(by_short[m.group(1)])
                    m = re.fullmatch(r"add_(\w+)Servicer_to_server", name)
                    if m and m.group(1) in by_short:
                        for full in by_short[m.group(1)]:
                            scan.implements[full] = svc_dir.name
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    found.append((node.func.attr, f"{rel}:{node.lineno}", tooling))
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in rpcs:
                    found.append((node.value, f"{rel}:{node.lineno}", tooling))
        per_service.append((svc_dir.name, stubs, found))
    for caller, stubs, found in per_service:
        for what, loc, tooling in found:
            paths = [what] if what.startswith("/") else [
                f"/{full}/{what}" for full in stubs if what in methods_of[full]]
            for path in paths:
                own = scan.implements.get(rpcs[path].service) == caller
                key = (ADMIN_SA if tooling or own else caller, path)
                scan.calls.add(key)
                scan.where.setdefault(key, []).append(loc)
    return scan


def _principal(sa: str, namespace: str = NAMESPACE) -> str:
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return pattern == path


def allowed(policies: list[Obj], workload_labels: dict[str, str], principal: str, path: str, port: int) -> bool:
    """Istio's evaluation for one request: DENY policies first, then any ALLOW rule that matches.

    Only the fields our policies use are understood; a rule with any other condition never matches."""
    applicable = [p for p in policies if _labels_match(
        ((p.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}, workload_labels)
        or not (p.get("spec") or {}).get("selector")]

    def rule_matches(rule: Obj) -> bool:
        if set(rule) - {"from", "to"}:
            return False
        if "from" in rule:
            ok = False
            for f in rule["from"]:
                src = f.get("source") or {}
                if set(src) - {"principals"}:
                    continue
                if any(_path_matches(p, principal) for p in src.get("principals", [])):
                    ok = True
            if not ok:
                return False
        if "to" in rule:
            ok = False
            for t in rule["to"]:
                op = t.get("operation") or {}
                if set(op) - {"paths", "ports", "methods"}:
                    continue
                if "ports" in op and str(port) not in [str(x) for x in op["ports"]]:
                    continue
                if "methods" in op and "POST" not in op["methods"]:
                    continue
                if "paths" in op and not any(_path_matches(p, path) for p in op["paths"]):
                    continue
                ok = True
            if not ok:
                return False
        return True

    for p in applicable:
        spec = p.get("spec") or {}
        if spec.get("action") == "DENY" and any(rule_matches(r) for r in spec.get("rules", [])):
            return False
    return any(rule_matches(r) for p in applicable if (p.get("spec") or {}).get("action", "ALLOW") == "ALLOW"
               for r in (p.get("spec") or {}).get("rules", []))


def _network_allows(k8s_objs: list[Obj], server_labels: dict[str, str], caller: str) -> bool:
    """Whether a NetworkPolicy selecting the server's pods admits the caller's pods on the `grpc` port."""
    for np in (o for o in k8s_objs if o.get("kind") == "NetworkPolicy"):
        spec = np.get("spec") or {}
        if not _labels_match((spec.get("podSelector") or {}).get("matchLabels") or {}, server_labels):
            continue
        for rule in spec.get("ingress", []):
            ports = {str(p.get("port")) for p in rule.get("ports", [])}
            if ports and "grpc" not in ports:
                continue
            for peer in rule.get("from", []):
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                if "namespaceSelector" not in peer and labels.get("app.kubernetes.io/name") == caller:
                    return True
    return False


def check_authorization(istio_objs: list[Obj], k8s_objs: list[Obj], rpcs: dict[str, Rpc],
                        scan: CodeScan) -> tuple[list[str], list[str]]:
    """(problems, notes). Paths exist, principals exist, the code's calls are allowed."""
    problems: list[str] = []
    notes: list[str] = []
    policies = [o for o in istio_objs if o.get("kind") == "AuthorizationPolicy"]
    sas = {str(o["metadata"]["name"]) for o in k8s_objs if o.get("kind") == "ServiceAccount"}
    pods = {str(d["metadata"]["name"]): dict(d["spec"]["template"]["metadata"]["labels"])
            for d in k8s_objs if d.get("kind") == "Deployment"}
    if not any((p.get("spec") or {}) == {} for p in policies):
        problems.append("no deny-by-default AuthorizationPolicy (an ALLOW policy with an empty spec)")
    for pol in policies:
        spec = pol.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        targets = [n for n, labels in pods.items() if _labels_match(selector, labels)]
        if spec and selector and not targets:
            problems.append(f"{obj_id(pol)}: selector {selector} matches no Deployment")
        for rule in spec.get("rules", []):
            ops = [t.get("operation") or {} for t in rule.get("to", [])]
            metrics_only = bool(ops) and all(
                op.get("ports") and {str(x) for x in op["ports"]} <= METRICS_PORTS
                for op in ops)
            if spec.get("action", "ALLOW") == "ALLOW" and not rule.get("from") and not metrics_only:
                problems.append(f"{obj_id(pol)}: an ALLOW rule without `from` lets any caller in")
            for f in rule.get("from", []):
                for principal in (f.get("source") or {}).get("principals", []):
                    m = re.fullmatch(rf"{re.escape(TRUST_DOMAIN)}/ns/([^/]+)/sa/([^/]+)", principal)
                    if not m:
                        problems.append(f"{obj_id(pol)}: principal {principal!r} is not "
                                        f"{TRUST_DOMAIN}/ns/<namespace>/sa/<service account>")
                    elif m.group(1) != NAMESPACE or m.group(2) not in sas:
                        problems.append(f"{obj_id(pol)}: principal {principal!r} names no ServiceAccount we deploy")
            for t in rule.get("to", []):
                op = t.get("operation") or {}
                metrics_ports = METRICS_PORTS
                if op.get("ports") and {str(p) for p in op["ports"]} <= metrics_ports:
                    if set(op.get("paths", [])) - {"/metrics"} or set(op.get("methods", ["GET"])) - {"GET"}:
                        problems.append(f"{obj_id(pol)}: on a metrics port allow only GET /metrics")
                    continue
                for path in op.get("paths", []):
                    if path.startswith("/grpc.") or path in INFRA_GRPC_PATHS:
                        if path not in INFRA_GRPC_PATHS:
                            problems.append(f"{obj_id(pol)}: {path} is not a known infrastructure gRPC path")
                        continue
                    if path not in rpcs:
                        problems.append(f"{obj_id(pol)}: gRPC path {path} does not exist in protos/")
                        continue
                    owner = scan.implements.get(rpcs[path].service)
                    if owner is not None and targets and owner not in targets:
                        problems.append(f"{obj_id(pol)}: allows {path} on {targets}, but {owner} serves it")
    for principal_sa, path in sorted(scan.calls):
        rpc = rpcs[path]
        server = scan.implements.get(rpc.service)
        locs = ", ".join(scan.where.get((principal_sa, path), [])[:3])
        if server is None:
            problems.append(f"{principal_sa} calls {path} ({locs}), but no service implements {rpc.service}")
            continue
        if server not in pods:
            problems.append(f"{principal_sa} calls {path} on {server}, which has no Deployment")
            continue
        if not allowed(policies, pods[server], _principal(principal_sa), path, GRPC_PORT[server]):
            problems.append(f"{principal_sa} -> {server}: {path} is called in code ({locs}) but no "
                            "AuthorizationPolicy allows it")
        if not _network_allows(k8s_objs, pods[server], principal_sa):
            problems.append(f"{principal_sa} -> {server}: {path} is called in code ({locs}) but no "
                            f"NetworkPolicy admits pods labelled app.kubernetes.io/name={principal_sa} on port grpc")
        elif principal_sa == ADMIN_SA:
            notes.append(f"operator tooling calls {path} ({locs}): allowed for {ADMIN_SA}")
    # allowed but never called (least privilege report, not an error: admin RPCs are called by people)
    for pol in policies:
        for rule in (pol.get("spec") or {}).get("rules", []):
            for f in rule.get("from", []):
                for principal in (f.get("source") or {}).get("principals", []):
                    sa = principal.rsplit("/", 1)[-1]
                    if sa == ADMIN_SA:
                        continue
                    for t in rule.get("to", []):
                        for path in (t.get("operation") or {}).get("paths", []):
                            if (sa, path) not in scan.calls and path in rpcs:
                                notes.append(f"{obj_id(pol)}: {sa} may call {path}, which its code does not call "
                                             "(yet)")
    return problems, notes


def _route_for(vs: Obj, path: str) -> Obj | None:
    for route in (vs.get("spec") or {}).get("http", []):
        matches = route.get("match")
        if not matches:
            return dict(route)
        for m in matches:
            uri = m.get("uri") or {}
            if ("exact" in uri and uri["exact"] == path) or ("prefix" in uri and path.startswith(uri["prefix"])) \
                    or ("regex" in uri and re.fullmatch(uri["regex"], path)):
                return dict(route)
    return None


def check_traffic(istio_objs: list[Obj], k8s_objs: list[Obj], rpcs: dict[str, Rpc], scan: CodeScan) -> list[str]:
    problems: list[str] = []
    services = {str(s["metadata"]["name"]) for s in k8s_objs if s.get("kind") == "Service"}
    vss = [o for o in istio_objs if o.get("kind") == "VirtualService"]
    drs = [o for o in istio_objs if o.get("kind") == "DestinationRule"]
    peer = [o for o in istio_objs if o.get("kind") == "PeerAuthentication"]
    if not any(not (p.get("spec") or {}).get("selector") and (p["spec"].get("mtls") or {}).get("mode") == "STRICT"
               for p in peer):
        problems.append("no namespace-wide PeerAuthentication with mtls.mode STRICT")
    for p in peer:
        for port, cfg in ((p.get("spec") or {}).get("portLevelMtls") or {}).items():
            if cfg.get("mode") != "STRICT" and int(port) not in {int(p) for p in METRICS_PORTS}:
                problems.append(f"{obj_id(p)}: port {port} is not a metrics port and must stay STRICT")

    def host_service(host: str) -> str | None:
        short = host.split(".")[0]
        fqdn = f"{short}.{NAMESPACE}.svc.cluster.local"
        if host in (short, f"{short}.{NAMESPACE}", f"{short}.{NAMESPACE}.svc", fqdn):
            return short
        return None

    for name in GRPC_PORT:
        if not any(host_service(d["spec"]["host"]) == name for d in drs):
            problems.append(f"no DestinationRule for {name}")
        else:
            dr = next(d for d in drs if host_service(d["spec"]["host"]) == name)
            tp = dr["spec"].get("trafficPolicy") or {}
            if "connectionPool" not in tp or "outlierDetection" not in tp:
                problems.append(f"{obj_id(dr)}: needs connectionPool and outlierDetection")
        if not any(name in {host_service(h) for h in v["spec"].get("hosts", [])} for v in vss):
            problems.append(f"no VirtualService for {name}")
    for d in drs:
        if host_service(d["spec"]["host"]) not in services:
            problems.append(f"{obj_id(d)}: host {d['spec']['host']} is not a Service of namespace {NAMESPACE}")
    for vs in vss:
        hosts = [host_service(h) for h in vs["spec"].get("hosts", [])]
        for h, raw in zip(hosts, vs["spec"].get("hosts", []), strict=True):
            if h not in services:
                problems.append(f"{obj_id(vs)}: host {raw} is not a Service of namespace {NAMESPACE}")
        for route in vs["spec"].get("http", []):
            for dest in route.get("route", []):
                dh = host_service(dest["destination"]["host"])
                if dh not in services:
                    problems.append(f"{obj_id(vs)}: route {route.get('name')} goes to unknown host "
                                    f"{dest['destination']['host']}")
                port = (dest["destination"].get("port") or {}).get("number")
                if dh in GRPC_PORT and port not in (None, GRPC_PORT[dh]):
                    problems.append(f"{obj_id(vs)}: route {route.get('name')} goes to port {port}, "
                                    f"not the gRPC port {GRPC_PORT[dh]}")
            for m in route.get("match") or []:
                exact = (m.get("uri") or {}).get("exact")
                if exact is not None and exact not in rpcs and exact not in INFRA_GRPC_PATHS:
                    problems.append(f"{obj_id(vs)}: route {route.get('name')} matches {exact}, not in protos/")
        for path, rpc in rpcs.items():
            if scan.implements.get(rpc.service) not in hosts:
                continue
            route = _route_for(vs, path)
            if route is None:
                problems.append(f"{obj_id(vs)}: no route for {path}")
                continue
            retries = route.get("retries") or {}
            attempts = int(retries.get("attempts", 2 if "retries" not in route else 0))
            retry_on = {c.strip() for c in str(retries.get("retryOn", "")).split(",") if c.strip()}
            if "retries" not in route:
                problems.append(f"{obj_id(vs)}: route {route.get('name')} ({path}) has no explicit retry policy "
                                "(Istio's default retries 2x on 503 and connect errors)")
            if rpc.client_streaming and attempts:
                problems.append(f"{obj_id(vs)}: {path} is a client/bidi stream and must not be retried by the mesh")
            if rpc.method not in READ_METHODS and attempts and not retry_on <= SAFE_RETRY_ON:
                problems.append(f"{obj_id(vs)}: {path} has side effects; route {route.get('name')} retries on "
                                f"{sorted(retry_on - SAFE_RETRY_ON)}, which may repeat it")
            if rpc.client_streaming and "timeout" in route:
                problems.append(f"{obj_id(vs)}: {path} is a session-long stream; route {route.get('name')} must "
                                "not set a timeout")
    return problems


