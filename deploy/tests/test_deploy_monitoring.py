"""Dashboard and alert rules name only metrics the code exports (or documented infrastructure metrics)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from deploy import validate as v

DASHBOARD = v.MONITORING / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    return v.render(v.MONITORING)


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    info = v.introspect()
    assert info.errors == {}, f"modules that do not import: {info.errors}"
    return info.metrics


def test_code_exports_the_shared_metrics_with_prometheus_suffixes(exported: dict[str, str]) -> None:
    for name in ("grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
                 "grpc_server_handling_seconds_count", "grpc_server_in_flight", "ai_cost_usd_total",
                 "ai_requests_total", "cost_events_emitted_total", "cost_events_pending"):
        assert name in exported, name
    assert "ai_cost_usd" not in exported or exported["ai_cost_usd"] != "counter"
    assert "grpc_server_handling_seconds" not in exported  # a histogram is only its series


def test_dashboard_and_rules_use_exported_metrics(monitoring: list[dict[str, Any]], exported: dict[str, str]) -> None:
    exprs = v.dashboard_exprs(DASHBOARD) + v.rule_exprs(monitoring)
    assert len(exprs) > 40
    assert v.check_metric_names(exprs, exported, v.external_metrics()) == []


def test_dashboard_has_the_seed_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for words in ("baseline", "savings", "tier", "model", "kept", "skipped", "p50", "p95", "p99", "error rate",
                  "cache hit rate", "lag"):
        assert words in titles, words
    uids = [p["id"] for p in dash["panels"]]
    assert len(uids) == len(set(uids))


def test_alert_rules(monitoring: list[dict[str, Any]]) -> None:
    assert v.check_monitoring_objects(monitoring) == []
    alerts = {name for name, _ in v.rule_exprs(monitoring)}
    for needed in ("FrugalHighErrorRate", "FrugalHighLatency", "FrugalLowCacheHitRate", "FrugalHPAMaxedOut",
                   "FrugalPodCrashLooping", "FrugalBillingConsumerLag", "FrugalBudgetExhausted"):
        assert needed in alerts, needed


def test_unknown_metric_names_are_reported(monitoring: list[dict[str, Any]], exported: dict[str, str],
                                           tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    dash["panels"][1]["targets"][0]["expr"] = 'sum(rate(ai_cost_total{namespace="$namespace"}[5m]))'  # seed's name
    broken = tmp_path / "dash.json"
    broken.write_text(json.dumps(dash))
    rules = copy.deepcopy(monitoring)
    prom = next(o for o in rules if o["kind"] == "PrometheusRule")
    prom["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(grpc_server_handled[5m])) > 0"  # counter w/o _total
    problems = v.check_metric_names(v.dashboard_exprs(broken) + v.rule_exprs(rules), exported, v.external_metrics())
    assert any("'ai_cost_total'" in p for p in problems), problems
    assert any("FrugalHighErrorRate" in p and "'grpc_server_handled'" in p for p in problems), problems
    del prom["spec"]["groups"][0]["rules"][0]["labels"]
    assert any("has no severity label" in p or "lacks labels" in p for p in v.check_monitoring_objects(rules))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, grpc_service) (rate(grpc_server_handling_seconds_bucket{grpc_type="unary"}[$__rate_interval]))',
         {"grpc_server_handling_seconds_bucket"}),
        ("histogram_quantile(0.95, sum(rate(a_bucket[5m])) by (le)) > 1.5e3", {"a_bucket"}),
        ('x{reason=~"a|b", job!="c"} / ignoring(pod) group_left(node) y offset 5m', {"x", "y"}),
        ("topk(10, max by (tenant_id) (m))", {"m"}),
        ("kube_hpa_cur >= bool kube_hpa_max unless on(ns) absent(up)", {"kube_hpa_cur", "kube_hpa_max", "up"}),
        ('label_replace(m2, "dst", "$1", "src", "(.*)")', {"m2"}),
    ],
)
def test_promql_metric_extraction(expr: str, names: set[str]) -> None:
    assert v.promql_metric_names(expr) == names
