"""Production fails loudly (issue 17): what a rendered production overlay must hold, beyond its schema.

- provider keys and the LiveKit connection are required Secret keys (a missing one keeps the pod from
  starting, with the key named in its status), and no Secret reference is optional;
- termination grace covers the longest stream: delay + drain + margin, and the router's drain covers its
  provider timeout (an answer in flight), the gateway's covers a call's drain (600 s);
- images by digest only; PodSecurity `restricted`; PDBs evict unhealthy pods; liveness is not readiness.
"""

from __future__ import annotations

from deploy.checks.base import NAMESPACE, Obj, obj_id, of_kind, pod_spec, service_deployments

# Secret keys each service must have in production (env var names of its Settings).
REQUIRED_SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "router": ("GEMINI_API_KEY", "ANTHROPIC_API_KEY", "COST_EVENTS_REDIS_URL", "REDIS_URL"),
    "vision-dedup": ("GEMINI_API_KEY", "COST_EVENTS_REDIS_URL", "REDIS_URL"),
    "rag": ("VOYAGE_API_KEY", "COHERE_API_KEY", "COST_EVENTS_REDIS_URL", "REDIS_URL"),
    "billing": ("COST_EVENTS_REDIS_URL", "REDIS_URL"),
    "media-gateway": ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DEEPGRAM_API_KEY",
                      "ELEVENLABS_API_KEY", "COST_EVENTS_REDIS_URL", "REDIS_URL"),
}
# The longest thing each service streams and must be allowed to finish on SIGTERM (seconds).
LONGEST_STREAM_S = {"router": 60.0, "media-gateway": 600.0}  # router: PROVIDER_TIMEOUT_S; gateway: call drain
GRACE_MARGIN_S = 5.0
DEFAULT_GRACE_S = 10.0  # frugal.common.settings.ServiceSettings.shutdown_grace_seconds
DEFAULT_DELAY_S = 1.0
DIGEST = "@sha256:"


def env_value(container: Obj, config_maps: dict[str, dict[str, str]], name: str) -> str | None:
    """The value `name` gets in `container` (env wins over envFrom; among envFrom the last source wins)."""
    for env in container.get("env", []):
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    value = None
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref and name in config_maps.get(ref.get("name"), {}):
            value = str(config_maps[ref["name"]][name])
    return value


def check_grace(objs: list[Obj], *, longest_stream: dict[str, float] | None = None) -> list[str]:
    """terminationGracePeriodSeconds >= delay + drain + margin; in production (`longest_stream` given) the
    drain also covers the longest stream of the service."""
    problems: list[str] = []
    config_maps = {str(c["metadata"]["name"]): dict(c.get("data") or {}) for c in of_kind(objs, "ConfigMap")}
    for dep in service_deployments(objs):
        name = str(dep["metadata"]["name"])
        pod = pod_spec(dep)
        main = pod["containers"][0]
        grace = float(env_value(main, config_maps, "SHUTDOWN_GRACE_SECONDS") or DEFAULT_GRACE_S)
        delay = float(env_value(main, config_maps, "SHUTDOWN_DELAY_SECONDS") or DEFAULT_DELAY_S)
        longest = (longest_stream or {}).get(name, 0.0)
        if grace < longest:
            problems.append(f"{obj_id(dep)}: SHUTDOWN_GRACE_SECONDS={grace:g} is shorter than its longest stream "
                            f"({longest:g} s): a rollout would cut it")
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        need = delay + max(grace, longest) + GRACE_MARGIN_S
        if not isinstance(tgps, int) or tgps < need:
            problems.append(f"{obj_id(dep)}: terminationGracePeriodSeconds={tgps} must be >= SHUTDOWN_DELAY_SECONDS"
                            f" + drain + {GRACE_MARGIN_S:g} = {need:g}")
    return problems


def check_probes_and_budgets(objs: list[Obj]) -> list[str]:
    problems: list[str] = []
    for dep in service_deployments(objs):
        main = pod_spec(dep)["containers"][0]
        live, ready = main.get("livenessProbe"), main.get("readinessProbe")
        if not live or not ready:
            problems.append(f"{obj_id(dep)}: needs both a livenessProbe and a readinessProbe")
        elif {k: v for k, v in live.items() if k in ("grpc", "httpGet", "tcpSocket", "exec")} == \
                {k: v for k, v in ready.items() if k in ("grpc", "httpGet", "tcpSocket", "exec")}:
            problems.append(f"{obj_id(dep)}: livenessProbe is the readinessProbe: a draining (NOT_SERVING) pod "
                            "would be killed mid-drain")
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        if pdb["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(f"{obj_id(pdb)}: unhealthyPodEvictionPolicy must be AlwaysAllow (an unhealthy pod "
                            "must not block node drains)")
    ns = next((n for n in of_kind(objs, "Namespace") if n["metadata"]["name"] == NAMESPACE), None)
    labels = (ns or {}).get("metadata", {}).get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append(f"Namespace/{NAMESPACE}: label pod-security.kubernetes.io/enforce must be `restricted`")
    return problems


def check_production(objs: list[Obj]) -> list[str]:
    """Everything above, plus required Secrets and digests: for the production overlays."""
    problems = check_grace(objs, longest_stream=LONGEST_STREAM_S)
    for dep in service_deployments(objs):
        name = str(dep["metadata"]["name"])
        pod = pod_spec(dep)
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            image = str(c.get("image", ""))
            if DIGEST not in image or len(image.split(DIGEST, 1)[1]) != 64:
                problems.append(f"{obj_id(dep)} container {c.get('name')}: image {image!r} is not pinned by digest "
                                "(<registry>/<name>@sha256:<64 hex>)")
            for src in c.get("envFrom", []):
                ref = src.get("secretRef")
                if ref and ref.get("optional", False):
                    problems.append(f"{obj_id(dep)} container {c.get('name')}: Secret {ref.get('name')} is "
                                    "optional: without it production would run degraded and stay Ready")
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("optional", False):
                    problems.append(f"{obj_id(dep)}: {env['name']} is an optional Secret key")
        main = pod.get("containers", [{}])[0]
        have = {e["name"] for e in main.get("env", []) if (e.get("valueFrom") or {}).get("secretKeyRef")}
        for key in REQUIRED_SECRET_KEYS.get(name, ()):
            if key not in have:
                problems.append(f"{obj_id(dep)}: {key} must come from a required Secret key (secretKeyRef, not "
                                "optional): a pod without it must not start")
    return problems


def placeholder_digests(objs: list[Obj]) -> list[str]:
    """Images whose digest is the all-zero placeholder (a note, not an error: the overlay labels them)."""
    return sorted({str(c.get("image")) for dep in service_deployments(objs)
                   for c in pod_spec(dep).get("containers", []) if str(c.get("image", "")).endswith("0" * 64)})
