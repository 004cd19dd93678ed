"""`/metrics` for the gateway: the main process's own metrics merged with those of its job processes.

Sessions run in job processes (livekit-agents' process pool); there prometheus_client runs in multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by `AgentServer` before its processes start) and writes each value to a
file. The main process keeps its ordinary in-memory registry (it imported prometheus_client before the
variable existed, and livekit-agents empties that directory when the worker starts, which would lose a main
process's files). Both sides declare the same families (`metrics.py`), so samples with the same name and
labels are summed: right for counters, histograms and the `livesum` gauges the gateway uses.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


def merge_families(*sources: Iterable[Metric]) -> list[Metric]:
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for source in sources:
        for family in source:
            into = families.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = into
                values[family.name] = {}
            samples = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                prev = samples.get(key)
                if prev is None:
                    samples[key] = s
                elif not s.name.endswith("_created"):  # creation times are not additive: keep the first
                    samples[key] = prev._replace(value=prev.value + s.value)
    for name, family in families.items():
        family.samples = list(values[name].values())
    return list(families.values())


class MergedCollector(Collector):
    def __init__(self, job_metrics_dir: str, main: CollectorRegistry = REGISTRY) -> None:
        self.job_metrics_dir = job_metrics_dir
        self.main = main

    def collect(self) -> Iterator[Metric]:
        sources: list[Iterable[Metric]] = [self.main.collect()]
        if os.path.isdir(self.job_metrics_dir):
            sources.append(multiprocess.MultiProcessCollector(None, path=self.job_metrics_dir).collect())  # type: ignore[no-untyped-call]
        yield from merge_families(*sources)


def mark_job_process_dead(job_metrics_dir: str, pid: int) -> None:
    """A job process ended: its `live*` gauges stop counting (prometheus_client keeps its counters)."""
    if os.path.isdir(job_metrics_dir):
        multiprocess.mark_process_dead(pid, path=job_metrics_dir)  # type: ignore[no-untyped-call]


class GatewayMetricsServer:
    """The /metrics HTTP endpoint over the merged registry."""

    def __init__(self, port: int, job_metrics_dir: str, host: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MergedCollector(job_metrics_dir))
        self.port = port
        self.host = host
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
