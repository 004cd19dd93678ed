"""Static validation of everything under deploy/, the Dockerfiles, docker-compose.yml and .env.example.

There is no Docker engine and no cluster on the development machines, so deployment artefacts are
checked here, offline, by `make test` (deploy/tests/test_deploy_*.py) and by hand:

    uv run python deploy/validate.py             # every check; exit status 1 on any problem
    uv run python deploy/validate.py render deploy/k8s/overlays/prod   # print the rendered manifests

What is checked, and with what:
- Kustomize: rendered by `kubectl kustomize` when kubectl is on PATH, and always by the minimal renderer
  below (`render`), which implements exactly the kustomize features this repository uses: `resources`
  (files and directories), `namespace`, `labels` (pairs, includeSelectors, includeTemplates), `images`
  (newName, newTag, digest), and `patches` (strategic-merge patches from `path` or inline `patch`, and
  JSON 6902 patches, with `target` selection by kind/name/labelSelector). Anything else in a
  kustomization.yaml is an error, not silently ignored. The tests check that both renderers agree.
- Kubernetes objects: the `kubernetes-validate` package's strict JSON schemas (unknown fields rejected),
  at the oldest and newest Kubernetes minor versions we support; then policy: securityContext, probes,
  resources, termination grace vs the server's drain, Services/HPA/PDB/NetworkPolicy per Deployment,
  selectors that match, no Secret objects.
- Istio objects: jsonschema against the CRDs' openAPIV3Schema in ../shared/data/schemas/istio/ (made
  strict like the API server's field validation, plus the CEL rules those CRDs use that we can evaluate);
  then: every gRPC path in an AuthorizationPolicy exists in protos/, principals are service accounts we
  deploy, every service-to-service call found in services/*/src is allowed, VirtualService retries never
  repeat a write and never retry a client stream.
- Monitoring: every metric named in the Grafana dashboard and the alert rules is exported by the code
  (collected from prometheus_client's registry after importing every module) or listed in
  deploy/monitoring/external-metrics.txt (kube-state-metrics, cAdvisor).
- docker-compose.yml, .env.example (every Settings field of every service is listed, with a comment),
  Dockerfiles (hadolint when installed, plus the project's own rules).
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `deploy` importable as a namespace package
    sys.path.insert(0, str(ROOT))

from deploy.simulate_build import dockerignore_patterns, ignored, parse_dockerfile  # noqa: E402

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ISTIO = DEPLOY / "istio"
MONITORING = DEPLOY / "monitoring"
PROTOS = ROOT / "protos"
SERVICES_DIR = ROOT / "services"
ISTIO_CRDS = ROOT.parent / "shared" / "data" / "schemas" / "istio" / "crd-all.gen.yaml"

NAMESPACE = "frugal"
TRUST_DOMAIN = "cluster.local"
ADMIN_SA = "frugal-admin"
# Kubernetes minor versions the manifests must be valid for (native gRPC probes are GA since 1.27;
# matchLabelKeys in topology spread constraints is on by default since 1.27).
K8S_VERSIONS = ("1.29", "latest")
# service directory -> (python package, grpc port, metrics port)
SERVICES: dict[str, tuple[str, int, int]] = {
    "router": ("frugal.router", 50051, 9101),
    "vision-dedup": ("frugal.vision", 50052, 9102),
    "rag": ("frugal.rag", 50053, 9103),
    "billing": ("frugal.billing", 50054, 9104),
    "media-gateway": ("frugal.gateway", 50055, 9105),
}
# Infrastructure gRPC paths an AuthorizationPolicy may name although they are not in protos/.
INFRA_GRPC_PATHS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
})
# Methods that change state: the mesh may retry them only when the request never reached the service.
WRITE_METHODS = frozenset({"IngestDocument", "DeleteDocument", "UpsertTenant"})
SAFE_RETRY_ON = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
# Drain after SIGTERM; fallbacks when the environment does not set them (frugal.common.settings defaults).
DEFAULT_SHUTDOWN_GRACE_S = 10.0
DEFAULT_SHUTDOWN_DELAY_S = 1.0
GRACE_MARGIN_S = 5.0

Obj = dict[str, Any]


class ValidationFailed(Exception):
    pass


# ----------------------------------------------------------------------------------------------- YAML


def load_yaml_docs(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise ValidationFailed(f"{path}: every YAML document must be a mapping")
    return docs


def obj_id(obj: Obj) -> str:
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


# ----------------------------------------------------------------------------------- kustomize (minimal)

KUSTOMIZE_KEYS = frozenset({"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"})
CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
# Strategic-merge keys of the lists we patch (Kubernetes' patchMergeKey); other lists are replaced.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath",
    "ports": "containerPort", "imagePullSecrets": "name", "tolerations": "key",
}


def render(directory: Path) -> list[Obj]:
    """Renders a kustomization directory with the subset of kustomize described in the module docstring."""
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise ValidationFailed(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(spec) - KUSTOMIZE_KEYS
    if unknown:
        raise ValidationFailed(f"{kfile}: unsupported kustomize field(s) {sorted(unknown)} "
                               "(extend deploy/validate.py's renderer, or use kubectl kustomize)")
    objs: list[Obj] = []
    for res in spec.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objs.extend(render(path))
        elif path.is_file():
            objs.extend(copy.deepcopy(load_yaml_docs(path)))
        else:
            raise ValidationFailed(f"{kfile}: resource {res!r} does not exist")
    for patch in spec.get("patches", []):
        _apply_patch(objs, patch, directory, kfile)
    if "namespace" in spec:
        for obj in objs:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for entry in spec.get("labels", []):
        _apply_labels(objs, entry)
    for image in spec.get("images", []):
        _apply_image(objs, image)
    keys = [obj_id(o) for o in objs]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise ValidationFailed(f"{kfile}: duplicate objects {sorted(dupes)}")
    return objs


def _selects(obj: Obj, target: Obj) -> bool:
    md = obj.get("metadata") or {}
    if "kind" in target and obj.get("kind") != target["kind"]:
        return False
    if "name" in target and not re.fullmatch(str(target["name"]), str(md.get("name"))):
        return False
    if "labelSelector" in target:
        labels = md.get("labels") or {}
        for term in str(target["labelSelector"]).split(","):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _apply_patch(objs: list[Obj], patch: Obj, directory: Path, kfile: Path) -> None:
    if "path" in patch:
        text = (directory / patch["path"]).read_text(encoding="utf-8")
    elif "patch" in patch:
        text = patch["patch"]
    else:
        raise ValidationFailed(f"{kfile}: a patch needs `path` or `patch`")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = patch.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON 6902
        if not target:
            raise ValidationFailed(f"{kfile}: a JSON 6902 patch needs a target")
        hits = [o for o in objs if _selects(o, target)]
        if not hits:
            raise ValidationFailed(f"{kfile}: patch target {target} matches nothing")
        for obj in hits:
            for op in docs[0]:
                _json_patch(obj, op, kfile)
        return
    for doc in docs:  # strategic merge, one object per document
        sel = dict(target or {})
        sel.setdefault("kind", doc.get("kind"))
        sel.setdefault("name", (doc.get("metadata") or {}).get("name"))
        hits = [o for o in objs if _selects(o, sel)]
        if not hits:
            raise ValidationFailed(f"{kfile}: patch for {sel.get('kind')}/{sel.get('name')} matches nothing")
        for obj in hits:
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            if target:  # a patch applied to several objects keeps each object's own name
                body.get("metadata", {}).pop("name", None)
            merged = strategic_merge(obj, body)
            obj.clear()
            obj.update(merged)


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out and isinstance(value, list) and key in MERGE_KEYS and isinstance(out[key], list):
                out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [copy.deepcopy(x) for x in base]
    for item in patch:
        if isinstance(item, dict) and key in item:
            for i, existing in enumerate(out):
                if isinstance(existing, dict) and existing.get(key) == item[key]:
                    out[i] = strategic_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        else:
            out.append(copy.deepcopy(item))
    return out


def _json_patch(obj: Obj, op: Obj, kfile: Path) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            raise ValidationFailed(f"{kfile}: unsupported JSON patch op {kind!r}")
    else:
        if kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise ValidationFailed(f"{kfile}: JSON patch replaces missing {op['path']} in {obj_id(obj)}")
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise ValidationFailed(f"{kfile}: unsupported JSON patch op {kind!r}")


def _apply_labels(objs: list[Obj], entry: Obj) -> None:
    pairs: dict[str, str] = entry.get("pairs", {})
    for obj in objs:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        spec = obj.get("spec") or {}
        if entry.get("includeTemplates") or entry.get("includeSelectors"):
            if obj.get("kind") in WORKLOAD_KINDS and "template" in spec:
                spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if entry.get("includeSelectors"):
            if obj.get("kind") == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif obj.get("kind") in WORKLOAD_KINDS or obj.get("kind") == "PodDisruptionBudget":
                spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)


def _apply_image(objs: list[Obj], image: Obj) -> None:
    for obj in objs:
        pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            ref = str(container.get("image", ""))
            name, tag, digest = split_image(ref)
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
    return ref, tag, digest


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_kubectl(directory: Path) -> list[Obj]:
    exe = kubectl()
    if exe is None:
        raise ValidationFailed("kubectl is not on PATH")
    proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ValidationFailed(f"kubectl kustomize {directory} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


# ------------------------------------------------------------------------------------ Kubernetes schema


def validate_k8s_schema(objs: Iterable[Obj], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    problems: list[str] = []
    for version in versions:
        v = latest_version() if version == "latest" else version
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{obj_id(obj)}: no Kubernetes {v} schema for {obj.get('apiVersion')} "
                                f"{obj.get('kind')}")
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                problems.append(f"{obj_id(obj)}: Kubernetes {v} schema: {path}: {err.message}")
    return problems


# ------------------------------------------------------------------------------------- Kubernetes policy


def _pod_spec(obj: Obj) -> Obj:
    return dict(((obj.get("spec") or {}).get("template") or {}).get("spec") or {})


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _env_value(container: Obj, config_maps: dict[str, dict[str, str]], name: str) -> str | None:
    for env in container.get("env", []):
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    value = None
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and name in config_maps.get(ref.get("name"), {}):
            value = str(config_maps[ref["name"]][name])
    return value


def check_k8s_policy(objs: list[Obj]) -> list[str]:
    """Security and operability rules for every frugal Deployment (label app.kubernetes.io/component=service)."""
    problems: list[str] = []
    by_kind: dict[str, list[Obj]] = {}
    for obj in objs:
        by_kind.setdefault(str(obj.get("kind")), []).append(obj)
    if by_kind.get("Secret"):
        problems += [f"{obj_id(s)}: Secrets must not be committed; reference them" for s in by_kind["Secret"]]
    config_maps = {str(c["metadata"]["name"]): dict(c.get("data") or {}) for c in by_kind.get("ConfigMap", [])}
    sas = {str(s["metadata"]["name"]) for s in by_kind.get("ServiceAccount", [])}
    services = by_kind.get("Service", [])
    deployments = [d for d in by_kind.get("Deployment", [])
                   if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "service"]
    names = {str(d["metadata"]["name"]) for d in deployments}
    if names != set(SERVICES):
        problems.append(f"service Deployments are {sorted(names)}, expected {sorted(SERVICES)}")
    for dep in deployments:
        name = str(dep["metadata"]["name"])
        where = obj_id(dep)
        pod = _pod_spec(dep)
        tmpl_labels = dict(dep["spec"]["template"].get("metadata", {}).get("labels") or {})
        selector = dict(dep["spec"].get("selector", {}).get("matchLabels") or {})
        if not _labels_match(selector, tmpl_labels):
            problems.append(f"{where}: selector {selector} does not match the pod template labels")
        if "replicas" in dep["spec"]:
            problems.append(f"{where}: spec.replicas is set although an HPA owns the count")
        sa = pod.get("serviceAccountName")
        if sa != name or sa not in sas:
            problems.append(f"{where}: serviceAccountName must be its own ServiceAccount {name!r} (got {sa!r})")
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 1000 or psc.get("runAsGroup") != 1000:
            problems.append(f"{where}: pod securityContext must run as non-root 1000:1000")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod securityContext.seccompProfile must be RuntimeDefault")
        annotations = dep["spec"]["template"].get("metadata", {}).get("annotations") or {}
        proxy = annotations.get("proxy.istio.io/config")
        try:
            hold = json.loads(proxy).get("holdApplicationUntilProxyStarts") if proxy else None
        except json.JSONDecodeError:
            hold = None
        if hold is not True:
            problems.append(f"{where}: proxy.istio.io/config must set holdApplicationUntilProxyStarts: true")
        grpc_port, metrics_port = SERVICES.get(name, ("", 0, 0))[1:]
        mounts_ok = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            cwhere = f"{where} container {container.get('name')}"
            sc = container.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation must be false")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{cwhere}: capabilities must drop ALL")
            res = container.get("resources") or {}
            for part in ("requests", "limits"):
                for kind in ("cpu", "memory"):
                    if kind not in (res.get(part) or {}):
                        problems.append(f"{cwhere}: resources.{part}.{kind} missing")
            tmp = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
            if not tmp or tmp[0]["name"] not in mounts_ok:
                problems.append(f"{cwhere}: /tmp must be a writable emptyDir (read-only root filesystem)")
            image = str(container.get("image", ""))
            if image.endswith(":latest"):
                problems.append(f"{cwhere}: image {image!r} uses :latest")
        main = next((c for c in pod.get("containers", []) if c.get("name") == name), None)
        if main is None:
            problems.append(f"{where}: no container named {name!r}")
            continue
        ports = {p.get("name"): p.get("containerPort") for p in main.get("ports", [])}
        if ports.get("grpc") != grpc_port or ports.get("metrics") != metrics_port:
            problems.append(f"{where}: ports must be grpc={grpc_port}, metrics={metrics_port} (got {ports})")
        for env_name, want in (("GRPC_PORT", grpc_port), ("METRICS_PORT", metrics_port)):
            got = _env_value(main, config_maps, env_name)
            if got is not None and got != str(want):
                problems.append(f"{where}: {env_name}={got} but the container port is {want}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = main.get(probe) or {}
            if (spec.get("grpc") or {}).get("port") != grpc_port:
                problems.append(f"{where}: {probe} must be a native gRPC probe on port {grpc_port}")
        grace = float(_env_value(main, config_maps, "SHUTDOWN_GRACE_SECONDS") or DEFAULT_SHUTDOWN_GRACE_S)
        delay = float(_env_value(main, config_maps, "SHUTDOWN_DELAY_SECONDS") or DEFAULT_SHUTDOWN_DELAY_S)
        tgps = pod.get("terminationGracePeriodSeconds")
        if not isinstance(tgps, int) or tgps < delay + grace + GRACE_MARGIN_S:
            problems.append(f"{where}: terminationGracePeriodSeconds={tgps} must be >= SHUTDOWN_DELAY_SECONDS + "
                            f"SHUTDOWN_GRACE_SECONDS + {GRACE_MARGIN_S:g} = {delay + grace + GRACE_MARGIN_S:g}")
        # Service
        svc = [s for s in services if _labels_match(s["spec"].get("selector") or {}, tmpl_labels)
               and s["metadata"]["name"] == name]
        if not svc:
            problems.append(f"{where}: no Service named {name!r} selecting its pods")
        else:
            sports = {p.get("name"): p for p in svc[0]["spec"].get("ports", [])}
            g = sports.get("grpc") or {}
            if g.get("port") != grpc_port or g.get("appProtocol") != "grpc":
                problems.append(f"{obj_id(svc[0])}: needs port `grpc` {grpc_port} with appProtocol grpc")
            if (sports.get("metrics") or {}).get("port") != metrics_port:
                problems.append(f"{obj_id(svc[0])}: needs port `metrics` {metrics_port}")
        # HPA
        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", [])
                if h["spec"].get("scaleTargetRef", {}).get("name") == name
                and h["spec"]["scaleTargetRef"].get("kind") == "Deployment"]
        if len(hpas) != 1 or hpas[0].get("apiVersion") != "autoscaling/v2":
            problems.append(f"{where}: needs exactly one autoscaling/v2 HorizontalPodAutoscaler")
        else:
            spec = hpas[0]["spec"]
            if not spec.get("metrics"):
                problems.append(f"{obj_id(hpas[0])}: no metrics")
            if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
                problems.append(f"{obj_id(hpas[0])}: minReplicas > maxReplicas")
            for m in spec.get("metrics", []):
                if m.get("type") == "Resource":
                    rname = m["resource"]["name"]
                    if rname not in (main.get("resources") or {}).get("requests", {}):
                        problems.append(f"{obj_id(hpas[0])}: scales on {rname} utilization but the container "
                                        f"requests no {rname}")
        # PDB
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", [])
                if _labels_match(p["spec"].get("selector", {}).get("matchLabels") or {}, tmpl_labels)]
        if len(pdbs) != 1:
            problems.append(f"{where}: needs exactly one PodDisruptionBudget selecting its pods (got {len(pdbs)})")
        # NetworkPolicy
        nps = [n for n in by_kind.get("NetworkPolicy", [])
               if _labels_match(n["spec"].get("podSelector", {}).get("matchLabels") or {}, tmpl_labels)]
        if not nps:
            problems.append(f"{where}: no NetworkPolicy selects its pods")
    if not any(n["spec"].get("podSelector") == {} and n["spec"].get("policyTypes") == ["Ingress"]
               and not n["spec"].get("ingress") for n in by_kind.get("NetworkPolicy", [])):
        problems.append("no default-deny ingress NetworkPolicy (podSelector: {}, no ingress rules)")
    if ADMIN_SA not in sas:
        problems.append(f"ServiceAccount {ADMIN_SA!r} (the admin principal) is missing")
    return problems


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
    import fnmatch

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
                raise ValidationFailed(f"{py}: cannot parse: {err}") from err
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


# ------------------------------------------------------------------------------------------------ Istio


@cache
def istio_schemas(path: Path = ISTIO_CRDS) -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> openAPIV3Schema, from the Istio CRD bundle."""
    out: dict[tuple[str, str], Obj] = {}
    for crd in load_yaml_docs(path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def _strict(schema: Any) -> Any:
    """openAPIV3Schema -> JSON Schema as the API server applies it: unknown fields are errors, `nullable` allows
    null; the CEL rules are kept aside (x-kubernetes-validations) for _cel_problems."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+$")


def parse_duration(text: str) -> timedelta | None:
    """Go/CEL duration ('1h30m', '250ms', '0s'); None when malformed."""
    if not _DURATION.match(text):
        return None
    unit_s = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total = sum(float(n) * unit_s[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)", text))
    return timedelta(seconds=total)


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


# The CEL rules the Istio CRDs we use carry, as Python predicates (rule text -> predicate on `self`).
CEL_RULES: dict[str, Any] = {
    "duration(self) >= duration('1ms')":
        lambda s: (d := parse_duration(str(s))) is not None and d >= timedelta(milliseconds=1),
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(len(k) for k in s),
    '!self.contains("*")': lambda s: "*" not in s,
    "self.size() == 0": lambda s: len(s) == 0,
    "self.all(key, 0 < int(key) && int(key) <= 65535)":
        lambda s: all(str(k).isdigit() and 0 < int(k) <= 65535 for k in s),
}


def _cel_problems(schema: Any, value: Any, path: str, unknown: set[str]) -> Iterator[str]:
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations", []) or []:
        text = " ".join(str(rule["rule"]).split())
        pred = CEL_RULES.get(text)
        if pred is None:
            pred = next((p for prefix, p in _STRUCTURAL_RULES.items() if text.startswith(prefix)), None)
        if pred is None:
            unknown.add(text)
            continue
        try:
            ok = bool(pred(value))
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            yield f"{path or '/'}: {rule.get('message', text)} (got {value!r})"
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k, v in value.items():
            sub = props.get(k) or (schema.get("additionalProperties") if isinstance(
                schema.get("additionalProperties"), dict) else None)
            if sub is not None:
                yield from _cel_problems(sub, v, f"{path}/{k}", unknown)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from _cel_problems(schema["items"], v, f"{path}/{i}", unknown)


_STRUCTURAL_RULES: dict[str, Any] = {
    # at most one of selector / targetRef / targetRefs
    "(has(self.selector) ? 1 : 0)": lambda s: sum(_has(s, k) for k in ("selector", "targetRef", "targetRefs")) <= 1,
    # serviceAccounts excludes principals/namespaces
    "(has(self.serviceAccounts)": lambda s: not (_has(s, "serviceAccounts") or _has(s, "notServiceAccounts"))
    or not any(_has(s, k) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")),
    # portLevelMtls needs a workload selector with labels
    "has(self.portLevelMtls) ?": lambda s: not _has(s, "portLevelMtls")
    or bool((s.get("selector") or {}).get("matchLabels")),
}


def validate_istio_schema(objs: Iterable[Obj], crds: Path = ISTIO_CRDS) -> tuple[list[str], set[str]]:
    """(problems, CEL rules that were not evaluated)."""
    import jsonschema  # type: ignore[import-untyped]

    schemas = istio_schemas(crds)
    problems: list[str] = []
    unknown: set[str] = set()
    for obj in objs:
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        schema = schemas.get(key)
        if schema is None:
            problems.append(f"{obj_id(obj)}: no Istio CRD serves {key[0]} {key[1]}")
            continue
        spec_schema = schema["properties"]["spec"]
        strict = _strict(spec_schema)
        validator = jsonschema.Draft7Validator(strict)
        for err in sorted(validator.iter_errors(obj.get("spec", {})), key=lambda e: list(e.path)):
            path = "/".join(str(p) for p in err.path)
            problems.append(f"{obj_id(obj)}: Istio schema: spec/{path}: {err.message}")
        for msg in _cel_problems(spec_schema, obj.get("spec", {}), "spec", unknown):
            problems.append(f"{obj_id(obj)}: Istio rule: {msg}")
        if set(obj) - {"apiVersion", "kind", "metadata", "spec"}:
            extra = sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec"})
            problems.append(f"{obj_id(obj)}: unexpected top-level fields {extra}")
    return problems, unknown


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
                op.get("ports") and {str(x) for x in op["ports"]} <= {str(m) for _, _, m in SERVICES.values()}
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
                metrics_ports = {str(m) for _, _, m in SERVICES.values()}
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
        if not allowed(policies, pods[server], _principal(principal_sa), path, SERVICES[server][1]):
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
            if cfg.get("mode") != "STRICT" and int(port) not in {m for _, _, m in SERVICES.values()}:
                problems.append(f"{obj_id(p)}: port {port} is not a metrics port and must stay STRICT")

    def host_service(host: str) -> str | None:
        short = host.split(".")[0]
        fqdn = f"{short}.{NAMESPACE}.svc.cluster.local"
        if host in (short, f"{short}.{NAMESPACE}", f"{short}.{NAMESPACE}.svc", fqdn):
            return short
        return None

    for name in SERVICES:
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
                if dh in SERVICES and port not in (None, SERVICES[dh][1]):
                    problems.append(f"{obj_id(vs)}: route {route.get('name')} goes to port {port}, "
                                    f"not the gRPC port {SERVICES[dh][1]}")
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
            if rpc.method in WRITE_METHODS and attempts and not retry_on <= SAFE_RETRY_ON:
                problems.append(f"{obj_id(vs)}: {path} is a write; route {route.get('name')} retries on "
                                f"{sorted(retry_on - SAFE_RETRY_ON)}, which may repeat it")
            if rpc.client_streaming and "timeout" in route:
                problems.append(f"{obj_id(vs)}: {path} is a session-long stream; route {route.get('name')} must "
                                "not set a timeout")
    return problems


# --------------------------------------------------------------------------------- code introspection

_INTROSPECT = r"""
import importlib, json, pkgutil, sys, traceback
errors = {}
settings = {}
def walk(pkg_name):
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf in ("__main__", "testing") or ".migrations" in info.name:
            continue
        try:
            importlib.import_module(info.name)
        except BaseException as err:
            errors[info.name] = f"{type(err).__name__}: {err}"
for pkg in ["frugal.common"] + sys.argv[1:]:
    try:
        walk(pkg)
    except BaseException as err:
        errors[pkg] = f"{type(err).__name__}: {err}"
from prometheus_client import REGISTRY
suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
            "summary": ["", "_sum", "_count", "_created"], "gauge": [""], "info": ["_info"],
            "stateset": [""], "enum": [""], "untyped": [""], "unknown": [""],
            "gaugehistogram": ["_bucket", "_gsum", "_gcount"]}
names = {}
for metric in REGISTRY.collect():
    for sfx in suffixes.get(metric.type, [""]):
        names[metric.name + sfx] = metric.type
    for s in metric.samples:
        names.setdefault(s.name, metric.type)
for pkg in sys.argv[1:]:
    try:
        mod = importlib.import_module(pkg + ".config")
        cls = mod.Settings
        fields = {}
        for fname, info in cls.model_fields.items():
            alias = info.validation_alias
            if alias is None:
                envs = [(info.alias or fname).upper()]
            elif isinstance(alias, str):
                envs = [alias.upper()]
            else:
                envs = [str(c).upper() for c in getattr(alias, "choices", []) if isinstance(c, str)]
            fields[fname] = {"env": envs, "required": info.is_required()}
        settings[pkg] = fields
    except BaseException as err:
        errors[pkg + ".config"] = f"{type(err).__name__}: {err}"
print(json.dumps({"metrics": names, "settings": settings, "errors": errors}))
"""


@dataclass(frozen=True)
class Introspection:
    metrics: dict[str, str]
    settings: dict[str, dict[str, Any]]
    errors: dict[str, str]


@cache
def introspect() -> Introspection:
    """Imports every module of frugal.common and the services in a child process (import side effects stay
    there) and reports the metric names on the default registry and each service's Settings fields."""
    pkgs = [p for p, _, _ in SERVICES.values()]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", _INTROSPECT, *pkgs], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise ValidationFailed(f"introspection failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Introspection(data["metrics"], data["settings"], data["errors"])


# ---------------------------------------------------------------------------------------- monitoring

PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "inf", "nan", "atan2", "le",
})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana variables allowed)."""
    text = re.sub(r"\$\{[^}]*\}|\$__\w+|\$\w+", "1m", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]|[0-9.e+-]+", word):
            continue
        names.add(word)
    return names


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel (rows included)."""
    dash = json.loads(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []

    def walk(panels: list[Obj]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((str(p.get("title")), str(t["expr"])))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in (dash.get("templating") or {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and isinstance(q, str):
            m = re.search(r"label_values\(\s*([a-zA-Z_:][\w:]*)", q)
            if m:
                out.append((f"variable {var.get('name')}", m.group(1)))
    return out


def rule_exprs(objs: list[Obj]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for obj in objs:
        if obj.get("kind") != "PrometheusRule":
            continue
        for group in obj["spec"]["groups"]:
            for rule in group["rules"]:
                out.append((str(rule.get("alert") or rule.get("record")), str(rule["expr"])))
    return out


def external_metrics(path: Path = MONITORING / "external-metrics.txt") -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()]


def check_metric_names(exprs: list[tuple[str, str]], exported: Iterable[str], external: list[str]) -> list[str]:
    exported = set(exported)
    problems: list[str] = []
    for where, expr in exprs:
        for name in sorted(promql_metric_names(expr)):
            if name in exported or any(re.fullmatch(p.replace("*", ".*"), name) for p in external):
                continue
            problems.append(f"{where}: metric {name!r} is not exported by the code nor listed in "
                            "deploy/monitoring/external-metrics.txt")
    return problems


def check_monitoring_objects(objs: list[Obj]) -> list[str]:
    problems: list[str] = []
    kinds = {o.get("kind") for o in objs}
    for need in ("ServiceMonitor", "PrometheusRule"):
        if need not in kinds:
            problems.append(f"deploy/monitoring has no {need}")
    for obj in objs:
        if obj.get("kind") == "ServiceMonitor":
            eps = obj["spec"].get("endpoints") or []
            if not any(e.get("port") == "metrics" for e in eps):
                problems.append(f"{obj_id(obj)}: must scrape the `metrics` Service port")
            if NAMESPACE not in ((obj["spec"].get("namespaceSelector") or {}).get("matchNames") or []):
                problems.append(f"{obj_id(obj)}: namespaceSelector must include {NAMESPACE}")
        if obj.get("kind") == "PrometheusRule":
            for group in obj["spec"].get("groups", []):
                for rule in group.get("rules", []):
                    if "alert" in rule:
                        for key in ("expr", "labels", "annotations"):
                            if key not in rule:
                                problems.append(f"{obj_id(obj)}: alert {rule['alert']} lacks {key}")
                        if "severity" not in (rule.get("labels") or {}):
                            problems.append(f"{obj_id(obj)}: alert {rule['alert']} has no severity label")
                        if "for" in rule and parse_duration(str(rule["for"])) is None:
                            problems.append(f"{obj_id(obj)}: alert {rule['alert']}: bad `for` {rule['for']!r}")
    return problems


# ---------------------------------------------------------------------------------- compose and .env


COMPOSE_REQUIRED = ("livekit", "postgres", "redis", "rag-migrate", "billing-migrate", *SERVICES)
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(text: str) -> dict[str, bool]:
    """Variables interpolated in a compose file -> whether every use has a default."""
    out: dict[str, bool] = {}
    for m in re.finditer(r"\$\$|\$\{([A-Za-z_]\w*)(:?-[^}]*)?\}|\$([A-Za-z_]\w*)", text):
        name = m.group(1) or m.group(3)
        if not name:
            continue
        has_default = bool(m.group(2))
        out[name] = out.get(name, True) and has_default
    return out


def check_compose(path: Path = ROOT / "docker-compose.yml") -> list[str]:
    problems: list[str] = []
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return [f"{path.name}: not valid YAML: {err}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return [f"{path.name}: no `services` mapping"]
    unknown_top = set(doc) - {"name", "services", "volumes", "networks", "configs", "secrets", "include"} - {
        k for k in doc if str(k).startswith("x-")}
    if unknown_top:
        problems.append(f"{path.name}: unknown top-level keys {sorted(unknown_top)}")
    services: dict[str, Obj] = doc["services"]
    for name in COMPOSE_REQUIRED:
        if name not in services:
            problems.append(f"{path.name}: service {name!r} is missing")
    host_ports: dict[str, str] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"{path.name}: service {name} is not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            problems.append(f"{path.name}: {name} has neither image nor build")
        image = str(svc.get("image", ""))
        if image and (image.endswith(":latest") or (":" not in image.split("/")[-1] and "${" not in image)):
            problems.append(f"{path.name}: {name} image {image!r} is not pinned to a version")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"{path.name}: {name}: depends_on must use conditions (service_healthy...)")
            deps = {d: {} for d in deps}
        for dep, cond in deps.items():
            if dep not in services:
                problems.append(f"{path.name}: {name} depends on unknown service {dep!r}")
                continue
            condition = (cond or {}).get("condition")
            if condition not in ("service_healthy", "service_completed_successfully", "service_started"):
                problems.append(f"{path.name}: {name} -> {dep}: condition {condition!r}")
            dep_svc = services[dep]
            if condition == "service_healthy" and not (dep_svc.get("healthcheck") or {}).get("test") \
                    and "build" not in dep_svc:
                problems.append(f"{path.name}: {name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        for port in svc.get("ports", []):
            spec = str(port).split("/")[0]
            parts = spec.split(":")
            host = ":".join(parts[:-1]) if len(parts) > 1 else parts[0]
            if host in host_ports:
                problems.append(f"{path.name}: host port {host} used by {host_ports[host]} and {name}")
            host_ports[host] = name
    # cycles
    graph = {n: set((s.get("depends_on") or {}) if isinstance(s, dict) else ()) for n, s in services.items()}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(n: str, chain: list[str]) -> None:
        if n in done:
            return
        if n in visiting:
            problems.append(f"{path.name}: dependency cycle {' -> '.join([*chain, n])}")
            return
        visiting.add(n)
        for d in graph.get(n, ()):
            visit(d, [*chain, n])
        visiting.discard(n)
        done.add(n)

    for n in graph:
        visit(n, [])
    for name, (_module, grpc_port, metrics_port) in SERVICES.items():
        entry = services.get(name)
        if not isinstance(entry, dict):
            continue
        svc = entry
        where = f"{path.name}: {name}"
        build = svc.get("build") or {}
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        if not isinstance(build, dict) or build.get("context") not in (".", "./") or \
                dockerfile != f"services/{name}/Dockerfile" or not (ROOT / str(dockerfile)).exists():
            problems.append(f"{where}: build must be the repo root with dockerfile services/{name}/Dockerfile")
        test = (svc.get("healthcheck") or {}).get("test") or []
        if "frugal.common.healthcheck" not in " ".join(map(str, test)):
            problems.append(f"{where}: healthcheck must call python -m frugal.common.healthcheck (gRPC health)")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(str(e).split("=", 1) for e in env)
        if str(env.get("GRPC_PORT")) != str(grpc_port) or str(env.get("METRICS_PORT")) != str(metrics_port):
            problems.append(f"{where}: GRPC_PORT/METRICS_PORT must be {grpc_port}/{metrics_port}")
        for var, target in (("ROUTER_ADDR", "router"), ("VISION_ADDR", "vision-dedup"), ("RAG_ADDR", "rag"),
                            ("BILLING_ADDR", "billing")):
            if env.get(var) != f"{target}:{SERVICES[target][1]}":
                problems.append(f"{where}: {var} must be {target}:{SERVICES[target][1]} (got {env.get(var)!r})")
        if svc.get("read_only") is not True or str(svc.get("user")) != "1000:1000" \
                or "ALL" not in (svc.get("cap_drop") or []):
            problems.append(f"{where}: must run read_only, as user 1000:1000, with cap_drop ALL")
        if not any(str(t).startswith("/tmp") for t in svc.get("tmpfs") or []):
            problems.append(f"{where}: needs a tmpfs on /tmp (read-only root filesystem)")
        grace = parse_duration(str(svc.get("stop_grace_period", "10s")))
        if grace is None or grace.total_seconds() < DEFAULT_SHUTDOWN_DELAY_S + DEFAULT_SHUTDOWN_GRACE_S + \
                GRACE_MARGIN_S:
            problems.append(f"{where}: stop_grace_period must exceed the drain (delay + grace + margin)")
        for dep in ("redis",):
            if dep not in (svc.get("depends_on") or {}):
                problems.append(f"{where}: must wait for {dep}")
    for name in ("rag", "billing"):
        deps = (services.get(name) or {}).get("depends_on") or {}
        if (deps.get(f"{name}-migrate") or {}).get("condition") != "service_completed_successfully":
            problems.append(f"{path.name}: {name} must start after {name}-migrate completed successfully")
    return problems


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    commented_out: bool
    line: int
    described: bool


def parse_env_example(path: Path = ROOT / ".env.example") -> list[EnvEntry]:
    entries: list[EnvEntry] = []
    described = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            entries.append(EnvEntry(m.group(2), m.group(3), bool(m.group(1)), number, described))
        elif line.startswith("#") and len(line.lstrip("# ").strip()) > 0 and not line.lstrip("# ").startswith("---"):
            described = True
        elif not line or line.lstrip("# ").startswith("---"):
            described = False
    return entries


SECRETISH = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)$")
PLACEHOLDER = re.compile(r"^$|^(devkey|secret|frugal-dev-[a-z]+|change-?me.*|<.*>)$")


def check_env_example(path: Path = ROOT / ".env.example", compose: Path = ROOT / "docker-compose.yml",
                      settings: dict[str, dict[str, Any]] | None = None) -> list[str]:
    problems: list[str] = []
    entries = parse_env_example(path)
    names = [e.name for e in entries]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path.name}: {dup} is listed twice")
    for e in entries:
        if not e.described:
            problems.append(f"{path.name}:{e.line}: {e.name} has no comment describing it")
        if SECRETISH.search(e.name) and not PLACEHOLDER.match(e.value):
            problems.append(f"{path.name}:{e.line}: {e.name} looks like a real secret; leave it empty")
        if e.value == "" and not e.commented_out:
            problems.append(f"{path.name}:{e.line}: {e.name}= is empty: an empty variable is not an unset one "
                            "(it would override the default); comment it out")
    listed = set(names)
    for var, has_default in compose_variables(compose.read_text(encoding="utf-8")).items():
        if var not in listed:
            problems.append(f"{path.name}: {var} (used in {compose.name}) is not listed")
        elif not has_default:
            problems.append(f"{compose.name}: ${{{var}}} has no default; `make up` must work without .env")
    if settings is None:
        settings = introspect().settings
    for pkg, fields in settings.items():
        for fname, info in fields.items():
            if fname == "service_name":
                continue
            if not set(info["env"]) & listed:
                problems.append(f"{path.name}: {' or '.join(info['env'])} ({pkg}.config.Settings.{fname}) is missing")
    return problems


# ----------------------------------------------------------------------------------------- Dockerfiles


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def run_hadolint(paths: Iterable[Path]) -> list[str]:
    exe = hadolint()
    if exe is None:
        raise ValidationFailed("hadolint is not installed")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    return [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode else []


def check_dockerfile(path: Path, service: str) -> list[str]:
    """The project's own rules (applied whether or not hadolint is available)."""
    module, grpc_port, metrics_port = SERVICES[service]
    problems: list[str] = []
    text = path.read_text(encoding="utf-8")
    global_args, stages = parse_dockerfile(text)
    where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    if len(stages) < 2:
        problems.append(f"{where}: must be multi-stage")
        return problems
    for st in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), st.base)
        if base in {s.name for s in stages}:
            continue
        _, tag, digest = split_image(base)
        if not digest and (not tag or not re.search(r"\d+\.\d+\.\d+", tag)):
            problems.append(f"{where}: FROM {base} is not pinned to an exact version or digest")
    uv_stage = [s for s in stages if s.base.startswith("ghcr.io/astral-sh/uv:")]
    if not uv_stage:
        problems.append(f"{where}: uv must come from the official image ghcr.io/astral-sh/uv:<version>")
    runtime = stages[-1]
    ins = runtime.instructions
    users = [i for i in ins if i.keyword == "USER"]
    if not users or users[-1].args.strip() != "1000:1000":
        problems.append(f"{where}: the final stage must end as USER 1000:1000 (numeric, for runAsNonRoot)")
    else:
        after = [i for i in ins[ins.index(users[-1]):] if i.keyword in ("RUN", "COPY", "ADD")]
        if after:
            problems.append(f"{where}: {after[0].keyword} after USER at line {after[0].line} runs as non-root "
                            "on purpose? Move it before USER")
    syncs = [i for s in stages for i in s.instructions if i.keyword == "RUN" and "uv sync" in i.args]
    if not syncs:
        problems.append(f"{where}: no `uv sync` in the build")
    for i in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable", f"--package frugal-{service}"):
            if flag not in i.args:
                problems.append(f"{where}:{i.line}: uv sync lacks {flag}")
    for i in (i for s in stages for i in s.instructions):
        if i.keyword in ("ENV", "ARG") and re.search(r"(?i)(api_?key|secret|password|token)\s*=", i.args):
            problems.append(f"{where}:{i.line}: secrets must not be baked into the image ({i.keyword})")
        if i.keyword == "ADD" and re.search(r"https?://", i.args):
            problems.append(f"{where}:{i.line}: ADD of a URL; download in a RUN with a checksum instead")
        if i.keyword == "COPY" and re.search(r"(^|\s)\.env(\s|$)", i.args):
            problems.append(f"{where}:{i.line}: copies .env into the image")
    entry = [i for i in ins if i.keyword == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1].args) != ["python", "-m", module]:
        problems.append(f"{where}: ENTRYPOINT must be [\"python\", \"-m\", \"{module}\"] (exec form)")
    health = [i for i in ins if i.keyword == "HEALTHCHECK"]
    if not health or "frugal.common.healthcheck" not in health[-1].args:
        problems.append(f"{where}: HEALTHCHECK must call python -m frugal.common.healthcheck")
    exposed = {p for i in ins if i.keyword == "EXPOSE" for p in i.args.split()}
    if {str(grpc_port), str(metrics_port)} - exposed:
        problems.append(f"{where}: must EXPOSE {grpc_port} and {metrics_port}")
    env: dict[str, str] = {}
    for i in ins:
        if i.keyword == "ENV":
            env.update(dict(t.split("=", 1) for t in i.args.replace("\\", " ").split() if "=" in t))
    if env.get("GRPC_PORT") != str(grpc_port) or env.get("METRICS_PORT") != str(metrics_port):
        problems.append(f"{where}: ENV GRPC_PORT/METRICS_PORT must default to {grpc_port}/{metrics_port}")
    if not any(i.keyword == "VOLUME" and "/tmp" in i.args for i in ins):
        problems.append(f"{where}: declare the writable directory: VOLUME [\"/tmp\"]")
    return problems


def check_dockerignore(path: Path = ROOT / ".dockerignore") -> list[str]:
    if not path.exists():
        return [".dockerignore is missing"]
    pats = dockerignore_patterns(path)
    problems = [f".dockerignore must exclude {p}" for p in (".env", ".venv", ".git", "services/rag/tests/x.py",
                                                             "libs/common/src/frugal/common/__pycache__/x.pyc")
                if not ignored(p, pats)]
    problems += [f".dockerignore excludes {p}, which the images need" for p in (
        "uv.lock", "pyproject.toml", "libs/common/src/frugal/common/settings.py",
        "libs/common/src/frugal/common/data/prices.toml", "services/rag/src/frugal/rag/migrations/0001_init.sql")
        if ignored(p, pats)]
    return problems


# ------------------------------------------------------------------------------- image dependencies


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_closure(package: str, lock: Path = ROOT / "uv.lock") -> set[str]:
    """Distributions `uv sync --no-dev --package <package>` installs in a Linux image, from uv.lock (markers
    evaluated for Linux and this interpreter: the root override's `sys_platform == 'never'` drops
    sentence-transformers and torch)."""
    import tomllib

    from packaging.markers import Marker, default_environment

    env: dict[str, str] = {**{k: str(v) for k, v in default_environment().items()},
                           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}

    def applies(dep: Obj) -> bool:
        return "marker" not in dep or Marker(dep["marker"]).evaluate(env)

    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    deps: dict[str, list[Obj]] = {}
    extras: dict[tuple[str, str], list[Obj]] = {}
    for pkg in data.get("package", []):
        name = _norm(pkg["name"])
        deps.setdefault(name, []).extend(pkg.get("dependencies", []))
        for extra, items in (pkg.get("optional-dependencies") or {}).items():
            extras.setdefault((name, _norm(extra)), []).extend(items)
    seen: set[str] = set()
    todo = [_norm(package)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in deps.get(name, []):
            if not applies(dep):
                continue
            todo.append(_norm(dep["name"]))
            for extra in dep.get("extra", []):
                todo.extend(_norm(d["name"]) for d in extras.get((_norm(dep["name"]), _norm(extra)), [])
                            if applies(d))
    return seen


def _runtime_imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Top-level modules imported at run time: not under `if TYPE_CHECKING:`, not in `try: ... except
    ImportError`."""
    def guarded(node: ast.AST) -> bool:
        if isinstance(node, ast.If):
            test = node.test
            return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        return False

    def walk(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if guarded(child):
                if isinstance(child, ast.If):
                    for sub in child.orelse:
                        yield from walk(ast.Module(body=[sub], type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, child.lineno
            yield from walk(child)

    yield from walk(tree)


def check_image_dependencies(services_dir: Path = SERVICES_DIR, lock: Path = ROOT / "uv.lock") -> list[str]:
    """Every module a service imports at run time is installed in its image: provided by a distribution in
    the closure of `frugal-<svc>` in uv.lock (the dev group, e.g. frugal-devkit or aiohttp through it, is not
    in the image), or by the standard library."""
    from importlib.metadata import packages_distributions

    providers = {mod: {_norm(d) for d in dists} for mod, dists in packages_distributions().items()}
    import tomllib

    # frugal.<sub> comes from the workspace member whose src/frugal/<sub> holds it
    frugal_sub: dict[str, str] = {}
    for pyproject in [*ROOT.glob("libs/*/pyproject.toml"), *SERVICES_DIR.glob("*/pyproject.toml")]:
        dist = _norm(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"])
        for sub in (pyproject.parent / "src" / "frugal").glob("*"):
            if sub.is_dir() or sub.suffix == ".py":
                frugal_sub[sub.stem] = dist
    problems: list[str] = []
    for svc in SERVICES:
        src = services_dir / svc / "src"
        if not src.is_dir():
            continue
        closure = lock_closure(f"frugal-{svc}", lock)
        for py in sorted(src.rglob("*.py")):
            tree = ast.parse(py.read_text(encoding="utf-8"))
            for module, line in _runtime_imports(tree):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if top == "frugal":
                    parts = module.split(".")
                    dists = {frugal_sub.get(parts[1], "")} if len(parts) > 1 else set()
                else:
                    dists = providers.get(top, set())
                if not dists & closure:
                    where = py.relative_to(ROOT) if py.is_relative_to(ROOT) else py
                    problems.append(f"{where}:{line}: imports {module}, but frugal-{svc} does not depend on "
                                    f"{' or '.join(sorted(dists)) or 'any installed distribution providing it'} "
                                    "(the image would fail with ModuleNotFoundError)")
    return problems


# ------------------------------------------------------------------------------------------- runner


def all_checks() -> dict[str, list[str]]:
    """Every check, by section; used by the CLI (the tests call the pieces)."""
    results: dict[str, list[str]] = {}
    rpcs = proto_rpcs()
    scan = scan_code(rpcs=rpcs)
    rendered: dict[str, list[Obj]] = {}
    for overlay in overlays():
        objs = render(overlay)
        rendered[overlay.name] = objs
        results[f"k8s {overlay.name}: schema"] = validate_k8s_schema(objs)
        results[f"k8s {overlay.name}: policy"] = check_k8s_policy(objs)
        if kubectl():
            theirs = {obj_id(o): o for o in render_kubectl(overlay)}
            ours = {obj_id(o): o for o in objs}
            results[f"k8s {overlay.name}: kubectl kustomize agrees"] = [
                f"{k}: renderers disagree" for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    istio_objs = render(ISTIO)
    prod = rendered.get("prod") or next(iter(rendered.values()))
    if ISTIO_CRDS.exists():
        problems, unknown = validate_istio_schema(istio_objs)
        results["istio: schema"] = problems
        if unknown:
            print(f"note: {len(unknown)} CEL rule(s) not evaluated: {sorted(unknown)}")
    else:
        print(f"note: {ISTIO_CRDS} is missing: Istio schema validation skipped")
    for principal_sa, path in sorted(scan.calls):
        print(f"call: {principal_sa} -> {path}")
    authz, notes = check_authorization(istio_objs, prod, rpcs, scan)
    results["istio: authorization vs protos and code"] = authz
    results["istio: traffic"] = check_traffic(istio_objs, prod, rpcs, scan)
    for n in notes:
        print(f"note: {n}")
    mon = render(MONITORING)
    results["monitoring: objects"] = check_monitoring_objects(mon)
    info = introspect()
    results["code: modules import"] = [f"{m}: {e}" for m, e in sorted(info.errors.items())]
    exprs = dashboard_exprs(MONITORING / "grafana-dashboard.json") + rule_exprs(mon)
    results["monitoring: metric names"] = check_metric_names(exprs, info.metrics, external_metrics())
    results["compose"] = check_compose()
    results[".env.example"] = check_env_example(settings=info.settings)
    dockerfiles = {svc: SERVICES_DIR / svc / "Dockerfile" for svc in SERVICES}
    results["images: every runtime import is installed"] = check_image_dependencies()
    results["dockerfiles: project rules"] = [p for svc, path in dockerfiles.items()
                                             for p in check_dockerfile(path, svc)] + check_dockerignore()
    if hadolint():
        results["dockerfiles: hadolint"] = run_hadolint(dockerfiles.values())
    else:
        print("note: hadolint is not installed: only the project's Dockerfile rules ran")
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["render"]:
        if len(args) != 2:
            print("usage: validate.py render DIR", file=sys.stderr)
            return 2
        print(yaml.safe_dump_all(render(Path(args[1])), sort_keys=False), end="")
        return 0
    try:
        results = all_checks()
    except ValidationFailed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    failed = 0
    for section, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {section}")
        for p in problems:
            print(f"     - {p}")
        failed += bool(problems)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
