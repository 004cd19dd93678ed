"""`make deploy-check`: runs every check, one line per section; exit 1 on any problem.

    uv run python -m deploy.checks [--only SUBSTRING] [--list] [--docs]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python deploy/checks`: make the `deploy` namespace importable
    sys.path.insert(0, str(ROOT))

from deploy.checks import (  # noqa: E402
    compose,
    crd,
    env_file,
    images,
    keda,
    mesh,
    metrics,
    production,
    service_table,
    tools,
)
from deploy.checks.base import (  # noqa: E402
    COMPOSE,
    DOCKERFILE,
    ISTIO,
    MONITORING,
    CheckError,
    Obj,
    ToolMissing,
    load_yaml_docs,
    overlays,
)

PROD_OVERLAYS = ("prod", "prod-hpa")


def sections() -> list[tuple[str, Callable[[], list[str]]]]:
    """(name, check) in run order; a check returns its problems, raises ToolMissing to be skipped."""
    out: list[tuple[str, Callable[[], list[str]]]] = []
    for overlay in overlays():
        name = overlay.name

        def rendered(o: Path = overlay) -> list[Obj]:
            return tools.render(o)

        out += [
            (f"k8s {name}: kubectl kustomize + kubernetes-validate (1.29, newest)",
             lambda r=rendered: tools.validate_k8s_schema(r())),  # type: ignore[misc]
            (f"k8s {name}: KEDA CRD schemas", lambda r=rendered: crd.validate_custom_resources(r(), crd.KEDA_CRDS)),  # type: ignore[misc]
            (f"k8s {name}: one autoscaler per service, on its signal", lambda r=rendered: keda.check_scaling(r())),  # type: ignore[misc]
            (f"k8s {name}: service table", lambda r=rendered: service_table.check_manifests(r())),  # type: ignore[misc]
            (f"k8s {name}: grace, probes, PDBs, PodSecurity",
             lambda r=rendered: production.check_grace(r()) + production.check_probes_and_budgets(r())),  # type: ignore[misc]
        ]
        if name in PROD_OVERLAYS:
            out.append((f"k8s {name}: production (required Secrets, digests)",
                        lambda r=rendered: production.check_production(r())))  # type: ignore[misc]
    out += [
        ("istio: CRD schemas", lambda: crd.validate_custom_resources(tools.render(ISTIO), crd.ISTIO_CRDS)),
        ("istio: code calls vs AuthorizationPolicy and NetworkPolicy", _authorization),
        ("istio: retries vs side effects, routes", _traffic),
        ("istio: service table", lambda: service_table.check_istio(tools.render(ISTIO))),
        ("monitoring: kubectl kustomize (dashboard ConfigMap) + objects", _monitoring_objects),
        ("monitoring: promtool check rules", _promtool_rules),
        ("monitoring: promtool parses every dashboard and ScaledObject query", _promtool_queries),
        ("code: the metrics and config modules import", lambda: [f"{m}: {e}" for m, e in
                                                                sorted(metrics.introspect().errors.items())]),
        ("metrics: dashboard, rules and ScaledObjects name exported metrics", _metric_names),
        ("compose: docker compose config", lambda: [] if tools.compose_config(COMPOSE) else ["empty"]),
        ("compose: start order, healthchecks, Redis roles, bootstrap", lambda: compose.check_compose(
            tools.compose_config(COMPOSE))),
        ("compose: service table", lambda: service_table.check_compose(tools.compose_config(COMPOSE))),
        ("docs: service table in deploy/README.md and README.md; verify-deployment",
         lambda: service_table.check_docs() + service_table.check_readme() + service_table.check_verify_script()),
        (".env.example: complete", lambda: env_file.check_env_example(settings=metrics.introspect().settings)),
        ("images: every runtime import is installed (uv.lock)", images.check_image_dependencies),
        ("images: no frugal-devkit in images or runtime imports", images.check_no_devkit),
        ("images: Dockerfile vs workspace, .dockerignore", lambda: images.check_dockerfile() +
         images.check_dockerignore()),
        ("images: hadolint", lambda: tools.run_hadolint([DOCKERFILE])),
    ]
    return out


def _prod() -> list[Obj]:
    return tools.render(ROOT / "deploy" / "k8s" / "overlays" / "prod")


def _authorization() -> list[str]:
    rpcs = mesh.proto_rpcs()
    problems, _notes = mesh.check_authorization(tools.render(ISTIO), _prod(), rpcs, mesh.scan_code(rpcs=rpcs))
    return problems


def _traffic() -> list[str]:
    rpcs = mesh.proto_rpcs()
    return mesh.check_traffic(tools.render(ISTIO), _prod(), rpcs, mesh.scan_code(rpcs=rpcs))


def _monitoring_objects() -> list[str]:
    objs = tools.render(MONITORING)
    problems = metrics.check_monitoring_objects(objs)
    if not any(o.get("kind") == "ConfigMap" and "frugal-mesh.json" in (o.get("data") or {}) for o in objs):
        problems.append("deploy/monitoring: the Grafana dashboard ConfigMap (configMapGenerator) is missing")
    return problems


def _raw(*paths: Path) -> list[Obj]:
    """Source files read as they are: no kustomize patch touches a rule or a ScaledObject query, so these
    checks need no kubectl."""
    return [d for p in paths for d in load_yaml_docs(p)]


RULES = MONITORING / "prometheus-rule.yaml"
SCALED_OBJECTS = ROOT / "deploy" / "k8s" / "components" / "keda" / "scaledobjects.yaml"


def _rule_groups() -> list[Obj]:
    return [g for o in _raw(RULES) if o.get("kind") == "PrometheusRule" for g in o["spec"]["groups"]]


def _promtool_rules() -> list[str]:
    return tools.promtool_check_rules(_rule_groups())


def _all_queries() -> list[tuple[str, str]]:
    exprs = metrics.dashboard_exprs(MONITORING / "grafana-dashboard.json")
    return [(w, e) for w, e in exprs if not w.startswith("variable ")] + keda.queries(_raw(SCALED_OBJECTS))


def _promtool_queries() -> list[str]:
    return tools.promtool_check_exprs(_all_queries())


def _metric_names() -> list[str]:
    exprs = metrics.dashboard_exprs(MONITORING / "grafana-dashboard.json") + metrics.rule_exprs(
        _raw(RULES)) + keda.queries(_raw(SCALED_OBJECTS))
    return metrics.check_metric_names(exprs, metrics.introspect().metrics, metrics.external_metrics())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.checks", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the sections whose name contains this")
    p.add_argument("--list", action="store_true", help="print the section names")
    p.add_argument("--docs", action="store_true", help="rewrite the service table in deploy/README.md")
    args = p.parse_args(argv)
    if args.docs:
        service_table.write_docs()
        print(f"wrote the service table into {service_table.DOCS}")
        return 0
    failed = skipped = passed = 0
    t0 = time.monotonic()
    for name, check in sections():
        if args.only not in name:
            continue
        if args.list:
            print(name)
            continue
        try:
            problems = check()
        except ToolMissing as err:
            print(f"skip {name}: {err}")
            skipped += 1
            continue
        except CheckError as err:
            problems = [str(err)]
        print(f"{'ok  ' if not problems else 'FAIL'} {name}", flush=True)
        for problem in problems:
            print(f"     - {problem}")
        failed += bool(problems)
        passed += not problems
    if args.list:
        return 0
    print(f"deploy-check: {passed} passed, {failed} failed, {skipped} skipped ({time.monotonic() - t0:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
