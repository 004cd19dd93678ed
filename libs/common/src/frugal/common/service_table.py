"""The one service table: names, Python packages, gRPC and metrics ports, databases, gRPC APIs.

Everything that names a service reads this table or is checked against it: the services' default ports
(`frugal.common.settings.PORTS`), the local mesh runner (`frugal.devkit.localmesh`), docker-compose.yml, the
Kubernetes manifests, the Istio resources and the docs (`make deploy-check`, deploy/checks/service_table.py).
Start order is the table's order: a service comes after the services it calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str  # directory under services/, Kubernetes and compose name, ServiceAccount
    package: str  # `python -m <package>` runs it
    grpc_port: int
    metrics_port: int
    # Application database role (LOGIN, no BYPASSRLS, owns nothing) for services that own tables.
    db_role: str | None = None
    # gRPC service it implements (full proto name); the media-gateway serves only health and metrics.
    grpc_api: str | None = None

    @property
    def distribution(self) -> str:
        """The workspace member (PyPI-style distribution name) that holds it."""
        return f"frugal-{self.name}"

    @property
    def migrations_package(self) -> str | None:
        return f"{self.package}.migrations" if self.db_role else None

    @property
    def addr_env(self) -> str | None:
        """Environment variable through which the other services reach it (None: nobody calls it)."""
        return ADDR_ENV.get(self.name)


# In start order: dependencies first.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("billing", "frugal.billing", 50054, 9104, "frugal_billing", "frugal.api.billing.v1.BillingService"),
    ServiceSpec("rag", "frugal.rag", 50053, 9103, "frugal_rag", "frugal.api.rag.v1.RagService"),
    ServiceSpec("vision-dedup", "frugal.vision", 50052, 9102, None, "frugal.api.vision.v1.VisionService"),
    ServiceSpec("router", "frugal.router", 50051, 9101, None, "frugal.api.router.v1.RouterService"),
    ServiceSpec("media-gateway", "frugal.gateway", 50055, 9105),
)

# The client-side address variables (frugal.common.settings.ServiceSettings.*_addr).
ADDR_ENV: Mapping[str, str] = MappingProxyType({
    "router": "ROUTER_ADDR",
    "vision-dedup": "VISION_ADDR",
    "rag": "RAG_ADDR",
    "billing": "BILLING_ADDR",
})

BY_NAME: Mapping[str, ServiceSpec] = MappingProxyType({s.name: s for s in SERVICES})


def service(name: str) -> ServiceSpec:
    """The entry for `name`; a KeyError names the known services."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(BY_NAME)}") from None


def addresses(host_of: Mapping[str, str] | None = None, ports: Mapping[str, int] | None = None) -> dict[str, str]:
    """ROUTER_ADDR, VISION_ADDR, RAG_ADDR, BILLING_ADDR -> host:port. By default the host is the service's
    name (compose, Kubernetes); the local mesh passes 127.0.0.1 and its own ports."""
    out: dict[str, str] = {}
    for spec in SERVICES:
        if spec.addr_env is None:
            continue
        host = (host_of or {}).get(spec.name, spec.name)
        port = (ports or {}).get(spec.name, spec.grpc_port)
        out[spec.addr_env] = f"{host}:{port}"
    return out
