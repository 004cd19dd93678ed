"""Every overlay rendered by the real kustomize (`kubectl kustomize`; skipped where kubectl is absent) and
checked: Kubernetes schemas, KEDA ScaledObjects against the KEDA CRDs and on each service's own signal,
production failing loudly. Each check is shown to fail on a broken copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks import crd, keda, production, service_table, tools
from deploy.checks.base import K8S, MONITORING, of_kind, overlays
from deploy.tests.helpers import copy_k8s, deep, find, render

OVERLAYS = [p.name for p in overlays()]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def _needs_keda_crds() -> None:
    missing = [p for p in crd.KEDA_CRDS if not p.exists()]
    if missing:
        pytest.skip(f"{missing[0]} is missing: KEDA schema validation skipped")


def test_there_are_three_overlays() -> None:
    assert OVERLAYS == ["dev", "prod", "prod-hpa"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_every_check(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    assert tools.validate_k8s_schema(objs) == []
    assert keda.check_scaling(objs) == []
    assert service_table.check_manifests(objs) == []
    assert production.check_grace(objs) == [] and production.check_probes_and_budgets(objs) == []
    if overlay.startswith("prod"):
        assert production.check_production(objs) == []
    if crd.KEDA_CRDS[0].exists():
        assert crd.validate_custom_resources(objs, crd.KEDA_CRDS) == []


def test_what_each_overlay_contains(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod, prod_hpa = rendered["dev"], rendered["prod"], rendered["prod-hpa"]
    assert len(of_kind(prod, "ScaledObject")) == 5 and not of_kind(prod, "HorizontalPodAutoscaler")
    assert len(of_kind(prod_hpa, "HorizontalPodAutoscaler")) == 5 and not of_kind(prod_hpa, "ScaledObject")
    assert find(prod_hpa, "HorizontalPodAutoscaler", "router")["spec"]["minReplicas"] == 3
    assert find(dev, "HorizontalPodAutoscaler", "router")["spec"]["maxReplicas"] == 2
    # Redis in two roles in the dev overlay: the cost-events one persistent and noeviction
    events = find(dev, "StatefulSet", "redis-events")
    args = " ".join(events["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendfsync everysec" in args and "--maxmemory-policy noeviction" in args
    assert events["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    cache = find(dev, "Deployment", "redis-cache")
    assert "allkeys-lru" in cache["spec"]["template"]["spec"]["containers"][0]["args"]
    config = find(dev, "ConfigMap", "frugal-config")["data"]
    assert config["COST_EVENTS_REDIS_URL"].startswith("redis://redis-events:")
    assert config["REDIS_URL"].startswith("redis://redis-cache:")
    assert find(prod, "Namespace", "frugal")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"
    router = find(prod, "Deployment", "router")["spec"]["template"]["spec"]
    assert router["terminationGracePeriodSeconds"] >= 60 + 5
    assert find(prod, "Deployment", "media-gateway")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] >= 600
    assert all("@sha256:" in c["image"] for d in of_kind(prod, "Deployment")
               for c in d["spec"]["template"]["spec"]["containers"] if "frugal" in c["image"])


def test_scaled_objects_use_each_services_signal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    prod = rendered["prod"]
    triggers = {so["metadata"]["name"]: so["spec"]["triggers"] for so in of_kind(prod, "ScaledObject")}
    assert [t["type"] for t in triggers["billing"]] == ["redis-streams"]
    assert triggers["billing"][0]["metadata"]["consumerGroup"] == "billing-ledger"
    assert "grpc_server_in_flight" in triggers["router"][0]["metadata"]["query"]
    assert 'grpc_method="Respond"' in triggers["router"][0]["metadata"]["query"]
    assert "gateway_active_jobs" in triggers["media-gateway"][0]["metadata"]["query"]
    assert {t["type"] for t in triggers["vision-dedup"]} == {"cpu"}
    assert {t["type"] for t in triggers["rag"]} == {"prometheus", "cpu"}


def _write_broken_scaled_object(k8s: Path) -> None:
    path = k8s / "components" / "keda" / "scaledobjects.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0]["spec"]["minReplicaCounts"] = 3  # a typo: the API server rejects unknown fields
    docs[0]["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # metadata values are strings
    docs[1]["spec"]["triggers"][0]["type"] = "prometheus"  # vision-dedup on a query-less prometheus trigger
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_broken_scaled_object_fails_the_keda_schema(tmp_path: Path) -> None:
    _needs_keda_crds()
    k8s = copy_k8s(tmp_path)
    _write_broken_scaled_object(k8s)
    problems = "\n".join(crd.validate_custom_resources(render(k8s / "overlays" / "prod"), crd.KEDA_CRDS))
    assert "ScaledObject/frugal/router: ScaledObject schema: spec/: Additional properties are not allowed " \
           "('minReplicaCounts' was unexpected)" in problems
    assert "spec/triggers/0/metadata/threshold: 8 is not of type 'string'" in problems


def test_the_deploy_check_cli_fails_on_a_broken_scaled_object(tmp_path: Path) -> None:
    """`make deploy-check` itself (python -m deploy.checks) on a repository whose ScaledObject is broken."""
    _needs_keda_crds()
    import shutil
    import subprocess
    import sys

    from deploy.checks.base import ROOT

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    clone = tmp_path / "repo"
    (clone / "deploy").mkdir(parents=True)
    shutil.copytree(ROOT / "deploy" / "checks", clone / "deploy" / "checks")
    shutil.copy2(ROOT / "deploy" / "simulate_build.py", clone / "deploy" / "simulate_build.py")
    copy_k8s(clone / "deploy")
    _write_broken_scaled_object(clone / "deploy" / "k8s")
    proc = subprocess.run([sys.executable, "-m", "deploy.checks", "--only", "k8s prod: KEDA"], cwd=clone,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "FRUGAL_SHARED_DIR": str(crd.KEDA_CRDS[0].parents[3])})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL k8s prod: KEDA CRD schemas" in proc.stdout
    assert "minReplicaCounts" in proc.stdout


def test_scaling_signals_are_enforced(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = deep(rendered["prod"])
    billing = find(objs, "ScaledObject", "billing")
    # the per-replica lag metric summed over replicas: what issue 17 found
    billing["spec"]["triggers"] = [{"type": "prometheus", "metadata": {
        "query": "sum(billing_consumer_lag_seconds)", "threshold": "30", "serverAddress": "http://p:9090"}}]
    router = find(objs, "ScaledObject", "router")
    router["spec"]["triggers"] = [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}]
    gateway = find(objs, "ScaledObject", "media-gateway")
    gateway["spec"]["minReplicaCount"] = 0
    objs.append(find(rendered["prod-hpa"], "HorizontalPodAutoscaler", "rag"))  # two autoscalers for rag
    problems = "\n".join(keda.check_scaling(objs))
    assert "ScaledObject billing: must scale on the cost-events consumer-group lag alone" in problems
    assert "ScaledObject router: must scale on in-flight Respond streams" in problems
    # Every RouterService RPC in flight (the short unary Route calls too) is not the signal either.
    router["spec"]["triggers"] = [{"type": "prometheus", "metadata": {
        "query": 'sum(grpc_server_in_flight{grpc_service="frugal.api.router.v1.RouterService"})',
        "threshold": "8", "serverAddress": "http://p:9090"}}]
    assert "ScaledObject router: must scale on in-flight Respond streams" in "\n".join(keda.check_scaling(objs))
    assert "ScaledObject/frugal/media-gateway: minReplicaCount must be >= 1" in problems
    assert "Deployment/frugal/rag: needs exactly one autoscaler (ScaledObject or HPA), has 1 ScaledObject(s) " \
           "and 1 HPA(s)" in problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda objs: find(objs, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0][
            "envFrom"][1]["secretRef"].update(optional=True), "Secret frugal-router is optional"),
        (lambda objs: find(objs, "Deployment", "media-gateway")["spec"]["template"]["spec"]["containers"][0][
            "env"].pop(), "ELEVENLABS_API_KEY must come from a required Secret key"),
        (lambda objs: find(objs, "Deployment", "rag")["spec"]["template"]["spec"]["containers"][0].update(
            image="registry.example.com/frugal/rag:0.1.0"), "is not pinned by digest"),
        (lambda objs: find(objs, "Deployment", "router")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=30), "router: terminationGracePeriodSeconds=30 must be >="),
        (lambda objs: find(objs, "Deployment", "media-gateway")["spec"]["template"]["spec"]["containers"][0][
            "env"][2].update(value="60"), "SHUTDOWN_GRACE_SECONDS=60 is shorter than its longest stream (600 s)"),
        (lambda objs: find(objs, "Deployment", "billing")["spec"]["template"]["spec"]["containers"][0].update(
            livenessProbe={"grpc": {"port": 50054}}), "livenessProbe is the readinessProbe"),
        (lambda objs: find(objs, "PodDisruptionBudget", "rag")["spec"].pop("unhealthyPodEvictionPolicy"),
         "unhealthyPodEvictionPolicy must be AlwaysAllow"),
        (lambda objs: find(objs, "Namespace", "frugal")["metadata"]["labels"].pop(
            "pod-security.kubernetes.io/enforce"), "pod-security.kubernetes.io/enforce must be `restricted`"),
    ],
)
def test_production_fails_loudly(rendered: dict[str, list[dict[str, Any]]], mutate: Any, expected: str) -> None:
    objs = deep(rendered["prod"])
    mutate(objs)
    problems = production.check_production(objs) + production.check_probes_and_budgets(objs)
    assert any(expected in p for p in problems), problems


def test_service_table_drift_in_manifests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = deep(rendered["prod"])
    svc = find(objs, "Service", "rag")
    svc["spec"]["ports"][0]["port"] = 50099
    find(objs, "ConfigMap", "frugal-config")["data"]["RAG_ADDR"] = "rag:50099"
    problems = service_table.check_manifests(objs)
    assert "Service rag: ports must be grpc=50053, metrics=9103" in problems
    assert any("RAG_ADDR=rag:50099 but the service table says rag:50053" in p for p in problems), problems


def test_dashboard_ships_as_a_configmap() -> None:
    objs = render(MONITORING)
    cm = find(objs, "ConfigMap", "frugal-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    assert json.loads(cm["data"]["frugal-mesh.json"]) == json.loads((MONITORING / "grafana-dashboard.json").read_text())
