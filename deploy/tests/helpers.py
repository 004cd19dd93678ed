"""Shared by the deploy tests: render with the real kustomize, skipping where kubectl is not installed."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from deploy.checks import tools
from deploy.checks.base import ROOT, ToolMissing


def render(directory: Path) -> list[dict[str, Any]]:
    try:
        return tools.render(directory)
    except ToolMissing as err:
        pytest.skip(str(err))


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def copy_k8s(tmp_path: Path) -> Path:
    """A copy of deploy/k8s to break (kustomize resolves the overlays' relative paths inside it)."""
    dest = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", dest)
    return dest


def deep(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return copy.deepcopy(objs)
