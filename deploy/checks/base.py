"""Paths, YAML loading and object naming shared by the checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ISTIO = DEPLOY / "istio"
MONITORING = DEPLOY / "monitoring"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROTOS = ROOT / "protos"
SERVICES_DIR = ROOT / "services"


def _shared_dir() -> Path:
    """shared/ sits beside the clone (CI, the main checkout); a worktree one level deeper finds it too."""
    import os

    if os.environ.get("FRUGAL_SHARED_DIR"):
        return Path(os.environ["FRUGAL_SHARED_DIR"])
    for parent in (ROOT.parent, ROOT.parent.parent):
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    return ROOT.parent / "shared"


SCHEMAS = _shared_dir() / "data" / "schemas"
NAMESPACE = "frugal"

Obj = dict[str, Any]


class CheckError(Exception):
    """A check could not run at all (a file that does not parse, a tool that failed)."""


class ToolMissing(Exception):
    """The tool a check needs is not installed here: the check is skipped with this message."""


def load_yaml_docs(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as fh:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader: the Istio CRDs are large
        docs = [d for d in yaml.load_all(fh, Loader=loader) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise CheckError(f"{path}: every YAML document must be a mapping")
    return docs


def parse_yaml_stream(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def obj_id(obj: Obj) -> str:
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def find(objs: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in objs if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name), None)


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def pod_spec(obj: Obj) -> Obj:
    return dict(((obj.get("spec") or {}).get("template") or {}).get("spec") or {})


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_deployments(objs: list[Obj]) -> list[Obj]:
    """The five services' Deployments (label app.kubernetes.io/component=service)."""
    return [d for d in of_kind(objs, "Deployment")
            if ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "service"]


def parse_duration_s(text: str) -> float | None:
    """Go/compose durations ('1m30s', '75s', '250ms'); None when malformed."""
    import re

    if not re.fullmatch(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s|us|ns))+", text):
        return None
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", text))
