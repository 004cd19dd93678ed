"""Each service scales on the signal that is its load (KEDA ScaledObjects), and never twice.

The schema is the CRD's (crd.py); this checks what the schema cannot: one ScaledObject per service
Deployment and no other HPA for it, the signal each one uses, and the CEL rule min <= max."""

from __future__ import annotations

from deploy.checks.base import Obj, obj_id, of_kind, service_deployments

# The cost-events consumer group billing reads (frugal.billing.config.CONSUMER_GROUP): the lag to scale on.
COST_EVENTS_STREAM = "cost-events"


def _signal_problems(name: str, triggers: list[Obj], consumer_group: str) -> list[str]:
    where = f"ScaledObject {name}"
    kinds = [str(t.get("type")) for t in triggers]
    queries = " ".join(str((t.get("metadata") or {}).get("query", ""))
                       for t in triggers if t.get("type") == "prometheus")
    if name == "router":
        if ("grpc_server_in_flight" not in queries or "frugal.api.router.v1.RouterService" not in queries
                or 'grpc_method="Respond"' not in queries):
            return [f"{where}: must scale on in-flight Respond streams (grpc_server_in_flight of RouterService, "
                    'grpc_method="Respond")']
        if "cpu" in kinds:
            return [f"{where}: CPU is not the router's load (it waits on providers): no cpu trigger"]
    elif name == "billing":
        streams = [t for t in triggers if t.get("type") == "redis-streams"]
        if len(streams) != 1 or kinds != ["redis-streams"]:
            return [f"{where}: must scale on the cost-events consumer-group lag alone (one redis-streams "
                    "trigger, read once from Redis; a per-replica lag metric would be summed over replicas)"]
        md = streams[0].get("metadata") or {}
        problems = []
        if md.get("stream") != COST_EVENTS_STREAM or md.get("consumerGroup") != consumer_group:
            problems.append(f"{where}: redis-streams must watch stream {COST_EVENTS_STREAM!r}, group "
                            f"{consumer_group!r} (got {md.get('stream')!r}, {md.get('consumerGroup')!r})")
        if "lagCount" not in md:
            problems.append(f"{where}: redis-streams must scale on lagCount (the group's lag)")
        return problems
    elif name == "media-gateway":
        if "gateway_active_jobs" not in queries:
            return [f"{where}: must scale on live LiveKit jobs (gateway_active_jobs)"]
    elif name in ("rag", "vision-dedup"):
        if "grpc_server_in_flight" not in queries and "cpu" not in kinds:
            return [f"{where}: must scale on in-flight RPCs or CPU"]
    for t in triggers:
        if t.get("type") == "prometheus" and t.get("metricType", "AverageValue") != "AverageValue":
            return [f"{where}: prometheus trigger {t.get('name')} must use metricType AverageValue (load per pod)"]
    return []


def check_scaling(objs: list[Obj], consumer_group: str = "billing-ledger") -> list[str]:
    """For a rendered overlay: every service Deployment has exactly one autoscaler (a ScaledObject, or a
    CPU HPA in overlays without KEDA), and each ScaledObject uses its service's signal."""
    problems: list[str] = []
    deployments = {str(d["metadata"]["name"]): d for d in service_deployments(objs)}
    scaled = of_kind(objs, "ScaledObject")
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    for name, dep in deployments.items():
        mine = [s for s in scaled if (s["spec"].get("scaleTargetRef") or {}).get("name") == name]
        own_hpas = [h for h in hpas if (h["spec"].get("scaleTargetRef") or {}).get("name") == name]
        if len(mine) + len(own_hpas) != 1:
            problems.append(f"{obj_id(dep)}: needs exactly one autoscaler (ScaledObject or HPA), has "
                            f"{len(mine)} ScaledObject(s) and {len(own_hpas)} HPA(s)")
        for so in mine:
            spec = so["spec"]
            if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
                problems.append(f"{obj_id(so)}: minReplicaCount > maxReplicaCount")
            if spec.get("minReplicaCount", 0) < 1:
                problems.append(f"{obj_id(so)}: minReplicaCount must be >= 1 (a call or stream needs a pod to land on)")
            triggers = list(spec.get("triggers") or [])
            problems += _signal_problems(name, triggers, consumer_group)
            if any(t.get("type") in ("cpu", "memory") for t in triggers):
                requests = ((dep["spec"]["template"]["spec"]["containers"][0].get("resources") or {})
                            .get("requests") or {})
                for t in triggers:
                    if t.get("type") in ("cpu", "memory") and t["type"] not in requests:
                        problems.append(f"{obj_id(so)}: scales on {t['type']} but the container requests none")
            for t in triggers:
                auth = (t.get("authenticationRef") or {}).get("name")
                if auth and not any(a["metadata"]["name"] == auth for a in of_kind(objs, "TriggerAuthentication")):
                    problems.append(f"{obj_id(so)}: trigger {t.get('name')} uses TriggerAuthentication {auth!r}, "
                                    "which the overlay does not define")
    for so in scaled:
        if (so["spec"].get("scaleTargetRef") or {}).get("name") not in deployments:
            problems.append(f"{obj_id(so)}: scaleTargetRef names no service Deployment")
    return problems


def queries(objs: list[Obj]) -> list[tuple[str, str]]:
    """(where, PromQL) of every prometheus trigger."""
    return [(f"{obj_id(so)} trigger {t.get('name')}", str(t["metadata"]["query"]))
            for so in of_kind(objs, "ScaledObject") for t in so["spec"].get("triggers") or []
            if t.get("type") == "prometheus" and "query" in (t.get("metadata") or {})]
