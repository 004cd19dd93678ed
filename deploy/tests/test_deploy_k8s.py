"""Kustomize overlays render (minimal renderer and kubectl agree), validate against the Kubernetes schemas,
and follow the security/operability rules; broken manifests are caught."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from deploy import validate as v

OVERLAYS = [p.name for p in v.overlays()]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: v.render(v.K8S / "overlays" / name) for name in OVERLAYS}


def _find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def test_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    assert v.validate_k8s_schema(objs) == []
    assert v.check_k8s_policy(objs) == []
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for svc in v.SERVICES:
        for kind in ("ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "NetworkPolicy"):
            assert (kind, svc) in kinds, f"{overlay}: {kind}/{svc} missing"
    assert all(o["metadata"].get("namespace") == v.NAMESPACE for o in objs if o["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minimal_renderer_matches_kubectl_kustomize(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    if v.kubectl() is None:
        pytest.skip("kubectl is not installed: only the minimal renderer ran")
    theirs = {v.obj_id(o): o for o in v.render_kubectl(v.K8S / "overlays" / overlay)}
    ours = {v.obj_id(o): o for o in rendered[overlay]}
    assert sorted(theirs) == sorted(ours)
    for key, obj in ours.items():
        assert obj == theirs[key], key


def test_overlays_differ_where_intended(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert _find(dev, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "frugal-router:dev"
    prod_image = _find(prod, "Deployment", "rag")["spec"]["template"]["spec"]
    assert {c["image"] for c in prod_image["containers"] + prod_image["initContainers"]} == \
        {"registry.example.com/frugal/rag:0.1.0"}
    assert _find(dev, "HorizontalPodAutoscaler", "router")["spec"]["maxReplicas"] == 2
    assert _find(prod, "HorizontalPodAutoscaler", "router")["spec"]["minReplicas"] == 3
    assert _find(dev, "ConfigMap", "frugal-config")["data"]["LOG_FORMAT"] == "text"
    assert not [o for o in prod if o["metadata"]["name"] in ("redis", "postgres")]


def test_optional_billing_lag_patch_is_valid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    prod = copy.deepcopy(rendered["prod"])
    hpa = _find(prod, "HorizontalPodAutoscaler", "billing")
    patch = v.load_yaml_docs(v.K8S / "overlays" / "prod" / "hpa-billing-lag.patch.yaml")[0]
    merged = v.strategic_merge(hpa, {k: val for k, val in patch.items() if k not in ("apiVersion", "kind")})
    assert v.validate_k8s_schema([merged]) == []
    assert [m["type"] for m in merged["spec"]["metrics"]] == ["Resource", "External"]


def test_termination_grace_covers_the_drain(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = copy.deepcopy(rendered["prod"])
    config = _find(objs, "ConfigMap", "frugal-config")
    config["data"]["SHUTDOWN_GRACE_SECONDS"] = "40"  # the drain now outlasts the 30 s grace period
    problems = v.check_k8s_policy(objs)
    assert any("router" in p and "terminationGracePeriodSeconds" in p for p in problems)
    assert not any("media-gateway" in p and "terminationGracePeriodSeconds" in p for p in problems)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
            readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"), "non-root"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
            readinessProbe={"exec": {"command": ["python", "-c", "import sys; sys.exit(0)"]}}), "readinessProbe"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits"), "limits"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="frugal-router:latest"), ":latest"),
        (lambda d: d["spec"].update(replicas=3), "replicas"),
        (lambda d: d["spec"]["template"]["metadata"]["annotations"].pop("proxy.istio.io/config"),
         "holdApplicationUntilProxyStarts"),
    ],
)
def test_broken_deployment_is_rejected(rendered: dict[str, list[dict[str, Any]]], mutate: Any, expected: str) -> None:
    objs = copy.deepcopy(rendered["prod"])
    mutate(_find(objs, "Deployment", "router"))
    problems = v.check_k8s_policy(objs)
    assert any(expected in p and "router" in p for p in problems), problems


def test_schema_rejects_unknown_fields_and_bad_types(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = copy.deepcopy(rendered["prod"])
    dep = _find(objs, "Deployment", "rag")
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50053}}  # typo
    svc = _find(objs, "Service", "rag")
    svc["spec"]["ports"][0]["port"] = "fifty"
    problems = v.validate_k8s_schema([dep, svc], versions=("latest",))
    assert any("Deployment/frugal/rag" in p and "readinesProbe" in p for p in problems), problems
    assert any("Service/frugal/rag" in p for p in problems), problems


def test_missing_companions_are_reported(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = [o for o in copy.deepcopy(rendered["prod"])
            if not (o["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget") and o["metadata"]["name"] == "rag")
            and o["metadata"]["name"] != "default-deny-ingress"]
    _find(objs, "Service", "billing")["spec"]["selector"] = {"app.kubernetes.io/name": "bill"}
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oops", "namespace": "frugal"},
                 "stringData": {"GEMINI_API_KEY": "x"}})
    problems = "\n".join(v.check_k8s_policy(objs))
    assert "Deployment/frugal/rag: needs exactly one autoscaling/v2 HorizontalPodAutoscaler" in problems
    assert "Deployment/frugal/rag: needs exactly one PodDisruptionBudget" in problems
    assert "no Service named 'billing' selecting its pods" in problems
    assert "Secret/frugal/oops: Secrets must not be committed" in problems
    assert "default-deny" in problems


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nconfigMapGenerator:\n  - name: x\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(v.ValidationFailed, match="configMapGenerator"):
        v.render(tmp_path)


def test_renderer_features(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text(
        "namespace: a\nlabels:\n  - pairs: {team: x}\n    includeSelectors: false\n    includeTemplates: true\n"
        "resources: [d.yaml]\n")
    (base / "d.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, labels: {tier: api}}\nspec:\n"
        "  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n"
        "    spec:\n      containers:\n        - {name: c, image: img, env: [{name: A, value: '1'}]}\n"
        "        - {name: side, image: other:1}\n")
    over = tmp_path / "over"
    over.mkdir()
    (over / "kustomization.yaml").write_text(
        "resources: [../base]\nimages:\n  - {name: img, newName: reg/img, newTag: '2'}\npatches:\n"
        "  - path: p.yaml\n  - target: {kind: Deployment, labelSelector: tier=api}\n"
        "    patch: |-\n"
        "      - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: C, value: '3'}}\n")
    (over / "p.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n"
        "      containers:\n        - {name: c, env: [{name: A, value: '9'}, {name: B, value: '2'}]}\n")
    (dep,) = v.render(over)
    assert dep["metadata"]["namespace"] == "a"
    assert dep["metadata"]["labels"] == {"tier": "api", "team": "x"}
    assert dep["spec"]["selector"] == {"matchLabels": {"app": "d"}}
    assert dep["spec"]["template"]["metadata"]["labels"] == {"app": "d", "team": "x"}
    c, side = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "reg/img:2" and side["image"] == "other:1"
    assert c["env"] == [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]
    if v.kubectl() is not None:
        assert v.render_kubectl(over) == [dep]
