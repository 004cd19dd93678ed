""".env.example is complete: every Settings field of every service and every variable docker-compose.yml
interpolates is listed, with a comment; no real secret, no empty assignment (an empty variable is not an
unset one). Regenerate it with `uv run python deploy/env_example.py --write`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.checks.base import COMPOSE, ENV_EXAMPLE
from deploy.checks.metrics import introspect


def compose_variables(text: str) -> dict[str, bool]:
    """Variables interpolated in a compose file -> whether every use has a default."""
    out: dict[str, bool] = {}
    for m in re.finditer(r"\$\$|\$\{([A-Za-z_]\w*)(:?-[^}]*)?\}|\$([A-Za-z_]\w*)", text):
        name = m.group(1) or m.group(3)
        if not name:
            continue
        has_default = bool(m.group(2))
        out[name] = out.get(name, True) and has_default
    return out


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    commented_out: bool
    line: int
    described: bool


def parse_env_example(path: Path = ENV_EXAMPLE) -> list[EnvEntry]:
    entries: list[EnvEntry] = []
    described = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            entries.append(EnvEntry(m.group(2), m.group(3), bool(m.group(1)), number, described))
        elif line.startswith("#") and len(line.lstrip("# ").strip()) > 0 and not line.lstrip("# ").startswith("---"):
            described = True
        elif not line or line.lstrip("# ").startswith("---"):
            described = False
    return entries


SECRETISH = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)$")
PLACEHOLDER = re.compile(r"^$|^(devkey|secret|frugal-dev-[a-z]+|change-?me.*|<.*>)$")


def check_env_example(path: Path = ENV_EXAMPLE, compose: Path = COMPOSE,
                      settings: dict[str, dict[str, Any]] | None = None) -> list[str]:
    problems: list[str] = []
    entries = parse_env_example(path)
    names = [e.name for e in entries]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path.name}: {dup} is listed twice")
    for e in entries:
        if not e.described:
            problems.append(f"{path.name}:{e.line}: {e.name} has no comment describing it")
        if SECRETISH.search(e.name) and not PLACEHOLDER.match(e.value):
            problems.append(f"{path.name}:{e.line}: {e.name} looks like a real secret; leave it empty")
        if e.value == "" and not e.commented_out:
            problems.append(f"{path.name}:{e.line}: {e.name}= is empty: an empty variable is not an unset one "
                            "(it would override the default); comment it out")
    listed = set(names)
    for var, has_default in compose_variables(compose.read_text(encoding="utf-8")).items():
        if var not in listed:
            problems.append(f"{path.name}: {var} (used in {compose.name}) is not listed")
        elif not has_default:
            problems.append(f"{compose.name}: ${{{var}}} has no default; `make up` must work without .env")
    if settings is None:
        settings = introspect().settings
    for pkg, fields in settings.items():
        for fname, info in fields.items():
            if fname == "service_name":
                continue
            if not set(info["env"]) & listed:
                problems.append(f"{path.name}: {' or '.join(info['env'])} ({pkg}.config.Settings.{fname}) is missing")
    return problems


