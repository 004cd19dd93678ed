"""The one service table: unique names and ports, the views derived from it, a clear error for a typo."""

from __future__ import annotations

import pytest

from frugal.common import service_table
from frugal.common.settings import PORTS, ServiceSettings


def test_names_and_ports_are_unique() -> None:
    names = [s.name for s in service_table.SERVICES]
    ports = [p for s in service_table.SERVICES for p in (s.grpc_port, s.metrics_port)]
    assert len(set(names)) == len(names) == 5
    assert len(set(ports)) == len(ports)


def test_derived_views_follow_the_table() -> None:
    assert PORTS == {s.name: (s.grpc_port, s.metrics_port) for s in service_table.SERVICES}
    assert service_table.addresses() == {"BILLING_ADDR": "billing:50054", "RAG_ADDR": "rag:50053",
                                         "VISION_ADDR": "vision-dedup:50052", "ROUTER_ADDR": "router:50051"}
    local = service_table.addresses({s.name: "127.0.0.1" for s in service_table.SERVICES}, {"rag": 1234})
    assert local["RAG_ADDR"] == "127.0.0.1:1234" and local["ROUTER_ADDR"] == "127.0.0.1:50051"
    defaults = ServiceSettings()
    assert (defaults.router_addr, defaults.billing_addr) == ("127.0.0.1:50051", "127.0.0.1:50054")
    rag = service_table.service("rag")
    assert (rag.distribution, rag.migrations_package, rag.db_role) == ("frugal-rag", "frugal.rag.migrations",
                                                                       "frugal_rag")
    assert service_table.service("media-gateway").addr_env is None


def test_an_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown service 'rags'; known: billing, rag"):
        service_table.service("rags")


def test_start_order_puts_dependencies_first() -> None:
    names = [s.name for s in service_table.SERVICES]
    assert names.index("billing") < names.index("router") < names.index("media-gateway")
    assert names.index("rag") < names.index("router") and names.index("vision-dedup") < names.index("router")
