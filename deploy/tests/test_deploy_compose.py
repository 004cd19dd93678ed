"""docker-compose.yml parses, names every service, orders startup by health; broken files are caught."""

from __future__ import annotations

from pathlib import Path

import yaml

from deploy import validate as v

COMPOSE = v.ROOT / "docker-compose.yml"


def test_compose_is_valid_and_complete() -> None:
    assert v.check_compose(COMPOSE) == []
    doc = yaml.safe_load(COMPOSE.read_text())
    assert set(v.COMPOSE_REQUIRED) <= set(doc["services"])
    assert doc["services"]["postgres"]["image"].startswith("${PGVECTOR_IMAGE:-pgvector/pgvector:")
    gw = doc["services"]["media-gateway"]
    assert gw["environment"]["LIVEKIT_URL"] == "ws://livekit:7880"
    assert gw["depends_on"]["livekit"]["condition"] == "service_healthy"
    for svc in ("rag", "billing"):
        url = doc["services"][svc]["environment"]["DATABASE_URL"]
        assert url.startswith(f"postgresql://frugal_{svc}:"), url  # the app role, never the owner
        assert "MIGRATION_DATABASE_URL" not in doc["services"][svc]["environment"]


def _broken(tmp_path: Path, edit: str, old: str) -> list[str]:
    text = COMPOSE.read_text()
    assert old in text
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, edit, 1))
    return v.check_compose(path)


def test_missing_service_and_unknown_dependency(tmp_path: Path) -> None:
    problems = _broken(tmp_path, "  vision-dedupe:\n", "  vision-dedup:\n")
    assert "docker-compose.yml: service 'vision-dedup' is missing" in problems
    assert any("depends on unknown service 'vision-dedup'" in p for p in problems)


def test_waiting_for_health_of_a_service_without_healthcheck(tmp_path: Path) -> None:
    problems = _broken(tmp_path, "", '      test: ["CMD", "redis-cli", "ping"]\n')
    assert any("waits for redis to be healthy, but redis has no healthcheck" in p for p in problems), problems


def test_port_clash_cycle_and_hardening(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    text = text.replace('"127.0.0.1:9102:9102"', '"127.0.0.1:9101:9102"')
    text = text.replace("    depends_on:\n      redis: {condition: service_healthy}\n\n  rag:",
                        "    depends_on:\n      redis: {condition: service_healthy}\n"
                        "      router: {condition: service_healthy}\n\n  rag:")
    text = text.replace('  user: "1000:1000"\n  read_only: true\n  tmpfs:',
                        '  user: "0:0"\n  read_only: true\n  tmpfs:')
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    problems = "\n".join(v.check_compose(path))
    assert "host port 127.0.0.1:9101 used by router and vision-dedup" in problems
    assert "dependency cycle" in problems and "vision-dedup" in problems
    assert "router: must run read_only, as user 1000:1000" in problems


def test_compose_variables() -> None:
    found = v.compose_variables("a: ${X:-1}\nb: ${Y}\nc: $$NOT\nd: ${X}\ne: ${Z:-}")
    assert found == {"X": False, "Y": False, "Z": True}
