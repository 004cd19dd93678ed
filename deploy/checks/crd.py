"""Custom resources (KEDA, Istio) validated against their CRDs' openAPIV3Schema, offline, the way the API
server's strict field validation would: unknown fields are errors, `nullable` allows null. The CRDs' CEL
rules (x-kubernetes-validations) are not evaluated; the few that matter here are checked in keda.py."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from deploy.checks.base import SCHEMAS, Obj, ToolMissing, load_yaml_docs, obj_id

KEDA_CRDS = (SCHEMAS / "keda" / "keda.sh_scaledobjects.yaml", SCHEMAS / "keda" / "keda.sh_triggerauthentications.yaml")
ISTIO_CRDS = (SCHEMAS / "istio" / "crd-all.gen.yaml",)


@cache
def crd_schemas(paths: tuple[Path, ...]) -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ToolMissing(f"CRD schema file(s) missing: {', '.join(missing)}: validation skipped")
    out: dict[tuple[str, str], Obj] = {}
    for path in paths:
        for crd in load_yaml_docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def strict(schema: Any) -> Any:
    """openAPIV3Schema -> JSON Schema as the API server applies it."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "x-kubernetes-validations"}
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def validate_custom_resources(objs: Iterable[Obj], crds: tuple[Path, ...]) -> list[str]:
    """Problems of every object whose apiVersion/kind one of `crds` serves; objects of other groups are
    ignored, and an object of a group these CRDs define but a kind/version they do not serve is an error."""
    import jsonschema  # type: ignore[import-untyped]

    schemas = crd_schemas(crds)
    groups = {api.split("/")[0] for api, _ in schemas}
    problems: list[str] = []
    for obj in objs:
        api, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        if api.split("/")[0] not in groups:
            continue
        schema = schemas.get((api, kind))
        if schema is None:
            problems.append(f"{obj_id(obj)}: no CRD serves {api} {kind}")
            continue
        top = set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"}
        if top:
            problems.append(f"{obj_id(obj)}: unexpected top-level fields {sorted(top)}")
        spec_schema = strict(schema["properties"]["spec"])
        validator = jsonschema.Draft7Validator(spec_schema)
        for err in sorted(validator.iter_errors(obj.get("spec", {})), key=lambda e: list(e.path)):
            path = "/".join(str(p) for p in err.path)
            problems.append(f"{obj_id(obj)}: {kind} schema: spec/{path}: {err.message}")
    return problems
