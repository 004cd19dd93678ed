"""The images: what is in them and what is not.

- Every module a service imports at run time is installed in its image (the uv.lock closure of
  frugal-<svc> without the dev group), so no image fails with ModuleNotFoundError.
- frugal-devkit (emulators, dev stack, demo, training) is in no image: it is not in any service's closure,
  its source is outside the build context (.dockerignore) and the Dockerfile never copies it; and no runtime
  package (libs/common, libs/encoder, services/*) imports frugal.devkit, lazily or not.
- The one Dockerfile stays in step with the workspace (a drift check): it copies every member's
  pyproject.toml in the dependency layer and the source of every runtime library in the second layer,
  installs non-editable without the dev group, and its runtime stage takes only /app/.venv.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from deploy.checks.base import DOCKERFILE, ROOT, SERVICES_DIR, Obj
from deploy.simulate_build import dockerignore_patterns, ignored, parse_dockerfile
from frugal.common.service_table import SERVICES

RUNTIME_SOURCES = ("libs/common/src", "libs/encoder/src", *(f"services/{s.name}/src" for s in SERVICES))
DEV_ONLY = "frugal-devkit"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def lock_closure(package: str, lock: Path = ROOT / "uv.lock") -> set[str]:
    """Distributions `uv sync --no-dev --package <package>` installs in a Linux image, from uv.lock (markers
    evaluated for Linux and this interpreter: the root override's `sys_platform == 'never'` drops
    sentence-transformers and torch)."""
    from packaging.markers import Marker, default_environment

    env: dict[str, str] = {**{k: str(v) for k, v in default_environment().items()},
                           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}

    def applies(dep: Obj) -> bool:
        return "marker" not in dep or Marker(dep["marker"]).evaluate(env)

    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    deps: dict[str, list[Obj]] = {}
    extras: dict[tuple[str, str], list[Obj]] = {}
    for pkg in data.get("package", []):
        name = _norm(pkg["name"])
        deps.setdefault(name, []).extend(pkg.get("dependencies", []))
        for extra, items in (pkg.get("optional-dependencies") or {}).items():
            extras.setdefault((name, _norm(extra)), []).extend(items)
    seen: set[str] = set()
    todo = [_norm(package)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in deps.get(name, []):
            if not applies(dep):
                continue
            todo.append(_norm(dep["name"]))
            for extra in dep.get("extra", []):
                todo.extend(_norm(d["name"]) for d in extras.get((_norm(dep["name"]), _norm(extra)), [])
                            if applies(d))
    return seen


def _runtime_imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Top-level modules imported at run time: not under `if TYPE_CHECKING:`, not in `try: ... except
    ImportError`."""
    def guarded(node: ast.AST) -> bool:
        if isinstance(node, ast.If):
            test = node.test
            return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        return False

    def walk(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if guarded(child):
                if isinstance(child, ast.If):
                    for sub in child.orelse:
                        yield from walk(ast.Module(body=[sub], type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, child.lineno
            yield from walk(child)

    yield from walk(tree)


def check_image_dependencies(services_dir: Path = SERVICES_DIR, lock: Path = ROOT / "uv.lock") -> list[str]:
    """Every module a service imports at run time is installed in its image: provided by a distribution in
    the closure of `frugal-<svc>` in uv.lock (the dev group, e.g. frugal-devkit or aiohttp through it, is not
    in the image), or by the standard library."""
    from importlib.metadata import packages_distributions

    providers = {mod: {_norm(d) for d in dists} for mod, dists in packages_distributions().items()}
    # frugal.<sub> comes from the workspace member whose src/frugal/<sub> holds it
    frugal_sub: dict[str, str] = {}
    for pyproject in [*ROOT.glob("libs/*/pyproject.toml"), *SERVICES_DIR.glob("*/pyproject.toml")]:
        dist = _norm(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"])
        for sub in (pyproject.parent / "src" / "frugal").glob("*"):
            if sub.is_dir() or sub.suffix == ".py":
                frugal_sub[sub.stem] = dist
    problems: list[str] = []
    for spec in SERVICES:
        svc = spec.name
        src = services_dir / svc / "src"
        if not src.is_dir():
            continue
        closure = lock_closure(f"frugal-{svc}", lock)
        for py in sorted(src.rglob("*.py")):
            tree = ast.parse(py.read_text(encoding="utf-8"))
            for module, line in _runtime_imports(tree):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if top == "frugal":
                    parts = module.split(".")
                    dists = {frugal_sub.get(parts[1], "")} if len(parts) > 1 else set()
                else:
                    dists = providers.get(top, set())
                if not dists & closure:
                    where = py.relative_to(ROOT) if py.is_relative_to(ROOT) else py
                    problems.append(f"{where}:{line}: imports {module}, but frugal-{svc} does not depend on "
                                    f"{' or '.join(sorted(dists)) or 'any installed distribution providing it'} "
                                    "(the image would fail with ModuleNotFoundError)")
    return problems


# ------------------------------------------------------------------------------------------- runner


def workspace_members(root: Path = ROOT) -> dict[str, Path]:
    """Distribution name -> member directory (relative), for libs/* and services/*."""
    out: dict[str, Path] = {}
    for pyproject in sorted([*root.glob("libs/*/pyproject.toml"), *root.glob("services/*/pyproject.toml")]):
        out[_norm(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"])] = \
            pyproject.parent.relative_to(root)
    return out


def check_no_devkit(root: Path = ROOT, lock: Path | None = None) -> list[str]:
    """frugal-devkit is in no image's closure, outside the build context, and no runtime module imports it."""
    lock = lock or root / "uv.lock"
    problems: list[str] = []
    for spec in SERVICES:
        if DEV_ONLY in lock_closure(spec.distribution, lock):
            problems.append(f"{spec.distribution} depends on {DEV_ONLY} (uv.lock): the image would contain it")
    patterns = dockerignore_patterns(root / ".dockerignore")
    if not ignored("libs/devkit/src/frugal/devkit/__init__.py", patterns):
        problems.append(".dockerignore must exclude libs/devkit/src (dev-only code never enters a build context)")
    for rel in RUNTIME_SOURCES:
        for py in sorted((root / rel).rglob("*.py")):
            problems += [f"{py.relative_to(root)}:{line}: {what}" for line, what in devkit_references(py)]
    return problems


def devkit_references(path: Path) -> Iterator[tuple[int, str]]:
    """Imports of frugal.devkit anywhere in a module (top level, in functions, under TYPE_CHECKING) and
    string references passed to importlib (`import_module("frugal.devkit...")`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.fullmatch(r"frugal\.devkit(\.[\w.]+)?", node.value):
            yield node.lineno, f"names module {node.value!r} (runtime code must not load frugal.devkit)"
            continue
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in names:
            if name == "frugal.devkit" or name.startswith("frugal.devkit."):
                yield node.lineno, f"imports {name} (frugal-devkit is dev-only: no runtime package imports it)"
                break


def check_dockerfile(path: Path = DOCKERFILE, root: Path = ROOT) -> list[str]:
    """The Dockerfile against the workspace and the image rules no linter knows."""
    problems: list[str] = []
    where = path.relative_to(root) if path.is_relative_to(root) else path
    _global_args, stages = parse_dockerfile(path.read_text(encoding="utf-8"))
    builder = next((s for s in stages if s.name == "builder"), None)
    if builder is None or len(stages) < 2:
        return [f"{where}: needs a `builder` stage and a runtime stage"]
    copies = [i for i in builder.instructions if i.keyword == "COPY" and "--from" not in i.args]
    sources = [tok for i in copies for tok in i.args.split()[:-1] if not tok.startswith("--")]
    runs = [i for i in builder.instructions if i.keyword == "RUN"]
    syncs = [i for i in runs if "uv sync" in i.args]
    members = workspace_members(root)
    for dist, rel in members.items():
        if f"{rel.as_posix()}/pyproject.toml" not in sources:
            problems.append(f"{where}: the dependency layer must COPY {rel.as_posix()}/pyproject.toml (workspace "
                            f"member {dist}): uv reads the whole workspace")
    needed = set().union(*(lock_closure(s.distribution, root / "uv.lock") for s in SERVICES))
    for dist, rel in members.items():
        copied = f"{rel.as_posix()}/" in sources or f"{rel.as_posix()}" in sources
        if rel.parts[0] == "libs":
            if dist in needed and not copied:
                problems.append(f"{where}: layer 2 must COPY {rel.as_posix()}/ ({dist} is a runtime dependency)")
            if dist not in needed and copied:
                problems.append(f"{where}: COPY {rel.as_posix()}/: {dist} is no service's runtime dependency "
                                "(dev-only code must not enter an image)")
    if "services/${SERVICE}/" not in sources:
        problems.append(f"{where}: layer 2 must COPY services/${{SERVICE}}/ (the service's own code)")
    if len(syncs) != 2 or "--no-install-workspace" not in syncs[0].args or "--no-install-workspace" in syncs[1].args:
        problems.append(f"{where}: build in two layers: `uv sync --no-install-workspace` (dependencies), then "
                        "`uv sync` (the project's own wheels)")
    for i in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable", '--package "frugal-${SERVICE}"'):
            if flag not in i.args:
                problems.append(f"{where}:{i.line}: uv sync lacks {flag}")
    if syncs and copies and copies[-1].line > syncs[-1].line:
        problems.append(f"{where}: COPY after the last uv sync")
    if syncs and any(c.line < syncs[0].line and not c.args.split()[0].endswith(("pyproject.toml", "uv.lock"))
                     for c in copies):
        problems.append(f"{where}: the dependency layer copies more than pyproject.toml/uv.lock: it would be "
                        "rebuilt on every code change")
    runtime = stages[-1]
    for i in runtime.instructions:
        if i.keyword in ("COPY", "ADD") and not re.fullmatch(r"--from=builder\s+/app/\.venv\s+/app/\.venv", i.args):
            problems.append(f"{where}:{i.line}: the runtime stage may only COPY --from=builder /app/.venv /app/.venv")
    users = [i for i in runtime.instructions if i.keyword == "USER"]
    if not users or users[-1].args.strip() != "1000:1000":
        problems.append(f"{where}: the runtime stage must end as USER 1000:1000 (numeric, for runAsNonRoot)")
    entry = [i for i in runtime.instructions if i.keyword == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1].args) != ["/app/.venv/bin/frugal-service"]:
        problems.append(f"{where}: ENTRYPOINT must be the service's console script [\"/app/.venv/bin/frugal-service\"]")
    if not any(i.keyword == "HEALTHCHECK" and "frugal.common.healthcheck" in i.args for i in runtime.instructions):
        problems.append(f"{where}: HEALTHCHECK must call python -m frugal.common.healthcheck")
    for s in stages:
        for i in s.instructions:
            if i.keyword in ("ENV", "ARG") and re.search(r"(?i)(api_?key|secret|password|token)\s*=", i.args):
                problems.append(f"{where}:{i.line}: secrets must not be baked into the image ({i.keyword})")
    for spec in SERVICES:
        scripts = tomllib.loads((SERVICES_DIR / spec.name / "pyproject.toml").read_text(encoding="utf-8")) \
            .get("project", {}).get("scripts", {})
        if f"frugal-{spec.name}" not in scripts:
            problems.append(f"services/{spec.name}/pyproject.toml: needs [project.scripts] frugal-{spec.name} "
                            "(the image's entry point)")
    return problems


def check_dockerignore(root: Path = ROOT) -> list[str]:
    pats = dockerignore_patterns(root / ".dockerignore")
    if not pats:
        return [".dockerignore is missing or empty"]
    problems = [f".dockerignore must exclude {p}" for p in (".env", ".venv", ".git", "services/rag/tests/x.py",
                                                             "libs/devkit/src/frugal/devkit/devstack.py")
                if not ignored(p, pats)]
    problems += [f".dockerignore excludes {p}, which the images need" for p in (
        "uv.lock", "pyproject.toml", "libs/devkit/pyproject.toml", "libs/common/src/frugal/common/settings.py",
        "libs/common/src/frugal/common/data/prices.toml", "services/rag/src/frugal/rag/migrations/0001_init.sql")
        if ignored(p, pats)]
    return problems

