"""Istio resources: schema (the CRDs' openAPIV3Schema, strict, plus their CEL rules), authorization against
the protos and the calls the code makes, traffic policy; broken resources are caught."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deploy.checks import base, crd, mesh
from deploy.tests.helpers import render

GATEWAY = f"{mesh.TRUST_DOMAIN}/ns/{base.NAMESPACE}/sa/media-gateway"


@pytest.fixture(scope="module")
def istio() -> list[dict[str, Any]]:
    return render(base.ISTIO)


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return render(base.K8S / "overlays" / "prod")


@pytest.fixture(scope="module")
def rpcs() -> dict[str, mesh.Rpc]:
    return mesh.proto_rpcs()


@pytest.fixture(scope="module")
def scan(rpcs: dict[str, mesh.Rpc]) -> mesh.CodeScan:
    return mesh.scan_code(rpcs=rpcs)


def _find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def _needs_crds() -> None:
    missing = [p for p in crd.ISTIO_CRDS if not p.exists()]
    if missing:
        pytest.skip(f"{missing[0]} is missing: Istio schema validation skipped")


def test_istio_resources_match_the_crd_schemas(istio: list[dict[str, Any]]) -> None:
    _needs_crds()
    assert crd.validate_custom_resources(istio, crd.ISTIO_CRDS) == []
    kinds = {o["kind"] for o in istio}
    assert kinds == {"PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService"}


def test_schema_catches_typos_and_bad_values(istio: list[dict[str, Any]]) -> None:
    _needs_crds()
    objs = copy.deepcopy(istio)
    vs = _find(objs, "VirtualService", "router")
    vs["spec"]["http"][0]["retries"]["retryOnn"] = "5xx"  # unknown field: the API server rejects it
    dr = _find(objs, "DestinationRule", "rag")
    dr["spec"]["trafficPolicy"]["loadBalancer"]["simple"] = "FASTEST"  # not in the enum
    text = "\n".join(crd.validate_custom_resources([vs, dr], crd.ISTIO_CRDS))
    assert "VirtualService/frugal/router" in text and "retryOnn" in text
    assert "FASTEST" in text


def test_a_paid_call_is_never_retried_once_it_reached_a_pod(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc], scan: mesh.CodeScan
) -> None:
    objs = copy.deepcopy(istio)
    respond = _find(objs, "VirtualService", "router")["spec"]["http"][0]
    assert respond["name"] == "respond"
    respond["retries"]["retryOn"] = "unavailable,cancelled,connect-failure,refused-stream"
    problems = mesh.check_traffic(objs, k8s, rpcs, scan)
    assert any("RouterService/Respond has side effects; route respond retries on ['cancelled', 'unavailable']" in p
               for p in problems), problems


def test_every_code_call_is_allowed_and_every_path_exists(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc], scan: mesh.CodeScan
) -> None:
    problems, _ = mesh.check_authorization(istio, k8s, rpcs, scan)
    assert problems == []
    # the scanner sees the mesh's main calls (guards against a scanner that finds nothing)
    assert ("media-gateway", "/frugal.api.router.v1.RouterService/Respond") in scan.calls
    assert ("media-gateway", "/frugal.api.vision.v1.VisionService/StreamFrames") in scan.calls
    assert scan.implements["frugal.api.rag.v1.RagService"] == "rag"


def test_only_the_router_and_the_gateway_tool_may_retrieve(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]]
) -> None:
    policies = [o for o in istio if o["kind"] == "AuthorizationPolicy"]
    rag_pod = {"app.kubernetes.io/name": "rag"}
    path = "/frugal.api.rag.v1.RagService/Retrieve"
    # The router for a turn's context; the gateway for its search_knowledge_base tool (frugal.gateway.tools).
    for caller in ("router", "media-gateway"):
        assert mesh.allowed(policies, rag_pod, f"{mesh.TRUST_DOMAIN}/ns/frugal/sa/{caller}", path, 50053), caller
    assert not mesh.allowed(policies, rag_pod, f"{mesh.TRUST_DOMAIN}/ns/frugal/sa/media-gateway",
                            "/frugal.api.rag.v1.RagService/IngestDocument", 50053)
    for caller in ("billing", "vision-dedup", "frugal-admin"):
        assert not mesh.allowed(policies, rag_pod, f"{mesh.TRUST_DOMAIN}/ns/frugal/sa/{caller}", path, 50053), caller
    assert not mesh.allowed(policies, rag_pod, f"{mesh.TRUST_DOMAIN}/ns/frugal/sa/router",
                         "/frugal.api.rag.v1.RagService/IngestDocument", 50053)
    assert not mesh.allowed(policies, rag_pod, f"{mesh.TRUST_DOMAIN}/ns/other/sa/router", path, 50053)


def test_removed_allow_rule_breaks_a_real_call(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc], scan: mesh.CodeScan
) -> None:
    objs = copy.deepcopy(istio)
    router = _find(objs, "AuthorizationPolicy", "router")
    router["spec"]["rules"] = [r for r in router["spec"]["rules"]
                               if GATEWAY not in str(r.get("from"))]
    problems, _ = mesh.check_authorization(objs, k8s, rpcs, scan)
    assert any("media-gateway -> router: /frugal.api.router.v1.RouterService/Respond is called in code" in p
               for p in problems), problems


def test_network_policy_must_admit_real_callers(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc], scan: mesh.CodeScan
) -> None:
    objs = copy.deepcopy(k8s)
    vision = _find(objs, "NetworkPolicy", "vision-dedup")
    rule = vision["spec"]["ingress"][0]
    rule["from"] = [p for p in rule["from"] if p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] != "router"]
    problems, _ = mesh.check_authorization(istio, objs, rpcs, scan)
    assert any("router -> vision-dedup: /frugal.api.vision.v1.VisionService/GetContext" in p and "NetworkPolicy" in p
               for p in problems), problems


def test_policy_paths_must_exist_in_protos(
    istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc], scan: mesh.CodeScan
) -> None:
    objs = copy.deepcopy(istio)
    rag = _find(objs, "AuthorizationPolicy", "rag")
    rag["spec"]["rules"][0]["to"][0]["operation"]["paths"].append("/frugal.api.rag.v1.RagService/Search")
    rag["spec"]["rules"][0]["to"][0]["operation"]["paths"].append("/frugal.api.router.v1.RouterService/Route")
    rag["spec"]["rules"][0]["from"][0]["source"]["principals"].append(f"{mesh.TRUST_DOMAIN}/ns/frugal/sa/nobody")
    deny_all = [o for o in objs if o["kind"] == "AuthorizationPolicy" and o["spec"] == {}][0]
    deny_all["spec"] = {"action": "ALLOW", "rules": [{}]}  # now it allows everything
    problems = "\n".join(mesh.check_authorization(objs, k8s, rpcs, scan)[0])
    assert "/frugal.api.rag.v1.RagService/Search does not exist in protos/" in problems
    assert "allows /frugal.api.router.v1.RouterService/Route on ['rag'], but router serves it" in problems
    assert "sa/nobody' names no ServiceAccount we deploy" in problems
    assert "no deny-by-default AuthorizationPolicy" in problems
    assert "AuthorizationPolicy/frugal/allow-nothing: an ALLOW rule without `from` lets any caller in" in problems


def test_traffic_policy(istio: list[dict[str, Any]], k8s: list[dict[str, Any]], rpcs: dict[str, mesh.Rpc],
                        scan: mesh.CodeScan) -> None:
    assert mesh.check_traffic(istio, k8s, rpcs, scan) == []
    objs = copy.deepcopy(istio)
    rag = _find(objs, "VirtualService", "rag")
    rag["spec"]["http"][-1]["retries"]["retryOn"] = "unavailable,cancelled,connect-failure,refused-stream"
    vision = _find(objs, "VirtualService", "vision-dedup")
    vision["spec"]["http"][0]["retries"] = {"attempts": 2, "retryOn": "unavailable"}
    vision["spec"]["http"][0]["timeout"] = "30s"
    objs = [o for o in objs if not (o["kind"] == "DestinationRule" and o["metadata"]["name"] == "billing")]
    _find(objs, "PeerAuthentication", "default")["spec"]["mtls"]["mode"] = "PERMISSIVE"
    problems = "\n".join(mesh.check_traffic(objs, k8s, rpcs, scan))
    assert "/frugal.api.rag.v1.RagService/IngestDocument has side effects; route default retries on" in problems
    assert "StreamFrames is a client/bidi stream and must not be retried" in problems
    assert "StreamFrames is a session-long stream; route stream-frames must not set a timeout" in problems
    assert "no DestinationRule for billing" in problems
    assert "no namespace-wide PeerAuthentication with mtls.mode STRICT" in problems


def test_protos_are_parsed(rpcs: dict[str, mesh.Rpc]) -> None:
    assert rpcs["/frugal.api.vision.v1.VisionService/StreamFrames"].client_streaming
    assert rpcs["/frugal.api.router.v1.RouterService/Respond"].server_streaming
    assert not rpcs["/frugal.api.router.v1.RouterService/Respond"].client_streaming
    assert {p.rsplit("/", 1)[1] for p in rpcs if "BillingService" in p} == {
        "ResolveTenant", "GetTenantPolicy", "UpsertTenant", "GetUsage", "GetBudgetState"}


def test_scanner_on_a_synthetic_tree(tmp_path: Path, rpcs: dict[str, mesh.Rpc]) -> None:
    def write(rel: str, text: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    write("rag/src/frugal/rag/server.py", """
        from frugal.api.rag.v1 import rag_pb2_grpc
        def build(app):
            rag_pb2_grpc.add_RagServiceServicer_to_server(object(), app.server)
    """)
    write("worker/src/frugal/worker/clients.py", """
        from frugal.api.rag.v1 import rag_pb2_grpc
        class Clients:
            def __init__(self, channel):
                self.rag = rag_pb2_grpc.RagServiceAsyncStub(channel)
    """)
    write("worker/src/frugal/worker/use.py", """
        async def turn(clients, req):
            return await clients.rag.Retrieve(req, timeout=1)   # attribute call in another module
        async def raw(channel):
            return channel.unary_unary("/frugal.api.rag.v1.RagService/ListDocuments")
        def unrelated(x):
            return x.Respond()   # no RouterService stub in this service: not a gRPC call
    """)
    write("worker/src/frugal/worker/cli.py", """
        async def admin(clients, req):
            return await clients.rag.DeleteDocument(req)
    """)
    scan = mesh.scan_code(tmp_path, rpcs)
    assert scan.implements == {"frugal.api.rag.v1.RagService": "rag"}
    assert scan.calls == {
        ("worker", "/frugal.api.rag.v1.RagService/Retrieve"),
        ("worker", "/frugal.api.rag.v1.RagService/ListDocuments"),
        (mesh.ADMIN_SA, "/frugal.api.rag.v1.RagService/DeleteDocument"),
    }
