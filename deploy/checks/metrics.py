"""Every metric a dashboard panel, alert rule or ScaledObject query names is exported by the code (or is an
infrastructure metric listed in deploy/monitoring/external-metrics.txt). The code's metrics are read from
prometheus_client's registry after importing the runtime modules that define metrics, in a child process
(import side effects stay there); the same child reports each service's Settings fields for env_file.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from deploy.checks.base import MONITORING, NAMESPACE, ROOT, CheckError, Obj, obj_id, parse_duration_s
from frugal.common.service_table import SERVICES

_INTROSPECT = r"""
import importlib, json, sys
errors = {}
settings = {}
modules, pkgs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in modules:
    try:
        importlib.import_module(name)
    except BaseException as err:
        errors[name] = f"{type(err).__name__}: {err}"
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
for pkg in pkgs:
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


def metric_modules(root: Path = ROOT) -> list[str]:
    """Runtime modules that import prometheus_client (where metrics are defined): importing these is enough
    to fill the registry, and much faster than importing everything (provider SDKs, livekit)."""
    out: list[str] = []
    for rel in ("libs/common/src", "libs/encoder/src", *(f"services/{s.name}/src" for s in SERVICES)):
        base = root / rel
        for py in sorted(base.rglob("*.py")):
            if "prometheus_client" in py.read_text(encoding="utf-8"):
                out.append(".".join(py.relative_to(base).with_suffix("").parts))
    return out


@cache
def introspect() -> Introspection:
    """Imports the modules that define metrics, and each service's config, in a child process (import side
    effects stay there); reports the metric names on the default registry and each service's Settings."""
    pkgs = [s.package for s in SERVICES]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", _INTROSPECT, json.dumps(metric_modules()), json.dumps(pkgs)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise CheckError(f"introspection failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Introspection(data["metrics"], data["settings"], data["errors"])



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
                        if "for" in rule and parse_duration_s(str(rule["for"])) is None:
                            problems.append(f"{obj_id(obj)}: alert {rule['alert']}: bad `for` {rule['for']!r}")
    return problems


# ---------------------------------------------------------------------------------- compose and .env


COMPOSE_REQUIRED = ("livekit", "postgres", "redis", "rag-migrate", "billing-migrate", *SERVICES)
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
