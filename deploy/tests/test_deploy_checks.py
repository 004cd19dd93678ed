"""`make deploy-check` (python -m deploy.checks) passes on the repository, and the checks no tool does
catch what they are for: metric names vs code, PromQL (promtool), .env.example, the docs' service table."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.checks import env_file, metrics, service_table, tools
from deploy.checks.base import ENV_EXAMPLE, MONITORING, ROOT, ToolMissing
from deploy.tests.helpers import render

DASHBOARD = MONITORING / "grafana-dashboard.json"


def test_make_deploy_check_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.checks"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout
    for section in ("k8s prod: KEDA CRD schemas", "compose: docker compose config",
                    "images: no frugal-devkit in images or runtime imports", "istio: CRD schemas"):
        assert section in proc.stdout


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    info = metrics.introspect()
    assert info.errors == {}, f"modules that do not import: {info.errors}"
    return info.metrics


def test_code_exports_the_shared_metrics(exported: dict[str, str]) -> None:
    for name in ("grpc_server_started_total", "grpc_server_handling_seconds_bucket", "grpc_server_in_flight",
                 "ai_cost_usd_total", "cost_events_emitted_total"):
        assert name in exported, name
    assert "grpc_server_handling_seconds" not in exported  # a histogram is only its series


def test_unknown_metric_names_are_reported(exported: dict[str, str]) -> None:
    objs = copy.deepcopy(render(MONITORING))
    prom = next(o for o in objs if o["kind"] == "PrometheusRule")
    prom["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(grpc_server_handled[5m])) > 0"  # counter w/o _total
    exprs = metrics.rule_exprs(objs) + [("ScaledObject router", "sum(grpc_server_inflight)")]
    problems = metrics.check_metric_names(exprs, exported, metrics.external_metrics())
    assert any("'grpc_server_handled'" in p for p in problems), problems
    assert any("ScaledObject router: metric 'grpc_server_inflight'" in p for p in problems), problems


def _promtool() -> None:
    try:
        tools.promtool()
    except ToolMissing as err:
        pytest.skip(str(err))


def test_promtool_rejects_bad_promql_and_rules() -> None:
    _promtool()
    dash = json.loads(DASHBOARD.read_text())
    exprs = metrics.dashboard_exprs(DASHBOARD)[:3] + [("panel X", 'sum(rate(x{job="a"}[5m])) by (')]
    problems = tools.promtool_check_exprs([(w, e) for w, e in exprs if not w.startswith("variable")])
    assert len(problems) == 1 and problems[0].startswith("panel X: PromQL rejected by promtool"), problems
    assert dash["panels"]  # the real dashboard's first queries pass
    groups: list[dict[str, Any]] = [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "5 minutes"}]}]
    assert tools.promtool_check_rules(groups) != []


def test_grafana_variables_become_valid_promql() -> None:
    expr = 'sum(rate(x{namespace="$namespace"}[$__rate_interval])) by (${group})'
    assert tools.grafana_to_promql(expr) == 'sum(rate(x{namespace="frugal"}[5m])) by (frugal)'


def test_env_example_is_complete_and_a_new_field_must_be_listed() -> None:
    settings = metrics.introspect().settings
    assert env_file.check_env_example(ENV_EXAMPLE, settings=settings) == []
    changed = {pkg: dict(fields) for pkg, fields in settings.items()}
    changed["frugal.router"]["brand_new_knob"] = {"env": ["BRAND_NEW_KNOB"], "required": False}
    assert env_file.check_env_example(ENV_EXAMPLE, settings=changed) == [
        ".env.example: BRAND_NEW_KNOB (frugal.router.config.Settings.brand_new_knob) is missing"]


def test_env_example_comments_and_secrets(tmp_path: Path) -> None:
    text = ENV_EXAMPLE.read_text() + "\nUNDOCUMENTED_THING=1\n# Another.\nDEEPGRAM_API_KEY=dg_live_4f9a8c7e\n"
    path = tmp_path / ".env.example"
    path.write_text(text)
    problems = env_file.check_env_example(path, settings={})
    assert any("UNDOCUMENTED_THING has no comment" in p for p in problems)
    assert any("DEEPGRAM_API_KEY looks like a real secret" in p for p in problems)


def test_docs_service_table(tmp_path: Path) -> None:
    assert service_table.check_docs() == []
    stale = tmp_path / "README.md"
    stale.write_text(service_table.DOCS.read_text().replace("| 50053 |", "| 50063 |"))
    assert service_table.check_docs(stale) == [
        "README.md: the service table is stale; regenerate it with `uv run python -m deploy.checks --docs`"]
    service_table.write_docs(stale)
    assert service_table.check_docs(stale) == []


def test_readme_and_verify_script_follow_the_service_table(tmp_path: Path) -> None:
    assert service_table.check_readme() == [] and service_table.check_verify_script() == []
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().replace("| 50053 | 9103 |", "| 50063 | 9103 |"))
    assert service_table.check_readme(readme) == [
        "README.md: row rag must say `python -m frugal.rag`, gRPC 50053, metrics 9103"]
    script = tmp_path / "verify-deployment"
    script.write_text("SERVICES=(router rag billing media-gateway)\n")
    assert service_table.check_verify_script(script) != []
