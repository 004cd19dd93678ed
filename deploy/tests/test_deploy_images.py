"""The images: one Dockerfile in step with the workspace, every runtime import installed, and frugal-devkit
in no image while no runtime package imports frugal.devkit (the check proves both; broken inputs fail it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploy.checks import images, tools
from deploy.checks.base import DOCKERFILE, ROOT, ToolMissing


def test_runtime_images_and_packages_have_no_devkit() -> None:
    assert images.check_no_devkit() == []
    # the check reads what it claims to: the closure of every service lacks frugal-devkit, the dev env has it
    for svc in ("frugal-router", "frugal-rag", "frugal-media-gateway"):
        assert "frugal-devkit" not in images.lock_closure(svc, ROOT / "uv.lock")


def test_devkit_imports_in_runtime_code_are_found(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text(textwrap.dedent("""
        from __future__ import annotations
        import importlib
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from frugal.devkit.devstack import DevStack
        def lazy():
            import frugal.devkit.emulators.gemini
            from frugal import devkit
            return importlib.import_module("frugal.devkit.localmesh")
    """))
    found = [line for line, _what in images.devkit_references(module)]
    assert found == [6, 8, 9, 10]


def test_devkit_in_a_service_closure_or_the_build_context_is_caught(tmp_path: Path) -> None:
    (tmp_path / "libs" / "common" / "src").mkdir(parents=True)
    (tmp_path / "libs" / "encoder" / "src").mkdir(parents=True)
    for svc in ("router", "vision-dedup", "rag", "billing", "media-gateway"):
        (tmp_path / "services" / svc / "src").mkdir(parents=True)
    (tmp_path / "services" / "router" / "src" / "x.py").write_text("from frugal.devkit import localmesh\n")
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text().replace("libs/devkit/src\n", ""))
    lock = (ROOT / "uv.lock").read_text()
    marker = '[[package]]\nname = "frugal-billing"\nversion = "0.1.0"\nsource = { editable = "services/billing" }\n' \
             'dependencies = [\n'
    assert marker in lock
    (tmp_path / "uv.lock").write_text(lock.replace(marker, marker + '    { name = "frugal-devkit" },\n'))
    problems = "\n".join(images.check_no_devkit(tmp_path))
    assert "frugal-billing depends on frugal-devkit (uv.lock)" in problems
    assert ".dockerignore must exclude libs/devkit/src" in problems
    assert "services/router/src/x.py:1: imports frugal.devkit" in problems


def test_every_runtime_import_is_installed_in_the_image() -> None:
    assert images.check_image_dependencies() == []


def test_dockerfile_is_in_step_with_the_workspace() -> None:
    assert images.check_dockerfile() == [] and images.check_dockerignore() == []
    assert not list(ROOT.glob("services/*/Dockerfile")), "one Dockerfile (deploy/Dockerfile), not one per service"


def test_dockerfile_drift_is_caught(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    broken = (text.replace("COPY libs/encoder/pyproject.toml libs/encoder/\n", "")
              .replace("COPY libs/encoder/ libs/encoder/\n",
                       "COPY libs/encoder/ libs/encoder/\nCOPY libs/devkit/ libs/devkit/\n")
              .replace("--no-install-workspace ", "")
              .replace("COPY --from=builder /app/.venv /app/.venv", "COPY --from=builder /src /src"))
    path = tmp_path / "Dockerfile"
    path.write_text(broken)
    problems = "\n".join(images.check_dockerfile(path))
    assert "must COPY libs/encoder/pyproject.toml (workspace member frugal-encoder)" in problems
    assert "COPY libs/devkit/: frugal-devkit is no service's runtime dependency" in problems
    assert "build in two layers" in problems
    assert "the runtime stage may only COPY --from=builder /app/.venv /app/.venv" in problems


def test_hadolint_is_clean() -> None:
    try:
        assert tools.run_hadolint([DOCKERFILE]) == []
    except ToolMissing as err:
        pytest.skip(str(err))


def test_replayed_build_has_no_devkit(tmp_path: Path) -> None:
    """deploy/simulate_build.py replays the Dockerfile's builder stage for billing (the smallest image) from
    the uv cache, offline, and inspects the virtualenv the runtime stage would copy: no frugal-devkit, no
    frugal/devkit package, no pytest, the entry point in place, the service importable from outside the
    checkout."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    env = {**os.environ, "UV_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "simulate_build.py"), "billing"],
                          capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0 and ("offline" in proc.stdout.lower() or "network" in proc.stdout.lower()):
        pytest.skip(f"the uv cache cannot serve an offline build here: {proc.stdout[-300:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "billing" in proc.stdout and "ok" in proc.stdout
