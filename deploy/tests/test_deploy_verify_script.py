"""scripts/verify-deployment: clear exit codes without kubectl or a cluster, and its checks against a
scripted kubectl (a stand-in for the Kubernetes API, which does not exist here)."""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path

from deploy.checks.base import ROOT

SCRIPT = ROOT / "scripts" / "verify-deployment"

FAKE_KUBECTL = textwrap.dedent('''\
    #!/usr/bin/env python3
    """A scripted kubectl: a healthy mesh, except rag's rollout is stuck and billing logged an error."""
    import sys
    args = [a for a in sys.argv[1:] if not a.startswith("--request-timeout")]
    if "-n" in args:
        i = args.index("-n"); del args[i:i + 2]
    line = " ".join(args)
    def out(text="", code=0):
        sys.stdout.write(text); sys.exit(code)
    if line.startswith("version"): out('{"serverVersion": {"gitVersion": "v1.31.0"}}')
    if line.startswith("config current-context"): out("fake")
    if line.startswith("rollout status deployment/rag"):
        out('Waiting for deployment "rag" rollout to finish: 0 of 2 updated replicas are available...', 1)
    if line.startswith("rollout status"): out("successfully rolled out")
    if line.startswith("get deployment") and "jsonpath" in line: out("2/2")
    if line.startswith("get hpa"): out("2 2 10 35 70")
    if line.startswith("get endpointslices"): out("10.0.0.1\\n10.0.0.2\\n")
    if line.startswith("get pods") and "part-of" in line: out("router-1 0,;\\nrag-1 5,CrashLoopBackOff;\\n")
    if line.startswith("top"): out("", 1)
    if line.startswith("logs deployment/billing"): out('{"level": "ERROR", "message": "ledger write failed"}\\n')
    if line.startswith("logs"): out('{"level": "INFO", "message": "ok"}\\n')
    if line.startswith("get crd"): out("", 1)
    if line.startswith("get "): out("")
    out("unexpected: " + line, 1)
''')


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_without_kubectl() -> None:
    proc = _run({"KUBECTL": "/nonexistent/kubectl"})
    assert proc.returncode == 2
    assert "kubectl not found" in proc.stderr


def test_unreachable_cluster(tmp_path: Path) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("#!/bin/sh\necho 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    proc = _run({"KUBECTL": str(kubectl)})
    assert proc.returncode == 3
    assert "cannot reach the Kubernetes API server" in proc.stderr
    assert "connection to the server localhost:8080 was refused" in proc.stderr


def test_reports_each_problem(tmp_path: Path) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    proc = _run({"KUBECTL": str(kubectl)}, "--timeout", "5s")
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "router rolled out (2/2 ready)" in out
    assert "rag: rollout not complete" in out
    assert "rag-1: CrashLoopBackOff" in out
    assert "router: 2 replicas (min 2, max 10), CPU 35% (target 70%)" in out
    assert "router has 2 ready endpoint(s)" in out
    assert "billing: 1 error line(s); last: {\"level\": \"ERROR\", \"message\": \"ledger write failed\"}" in out
    assert "router: no errors" in out
    assert "Istio is not installed" in out
    assert "3 problem(s)" in out


def test_keda_scaled_objects_and_missing_secrets(tmp_path: Path) -> None:
    """With KEDA (overlays/prod): the ScaledObject's readiness and its HPA's replicas are reported; a pod
    that cannot start because a required Secret key is missing is named with the reason."""
    fake = FAKE_KUBECTL.replace(
        'if line.startswith("get hpa"): out("2 2 10 35 70")\n',
        'if line.startswith("get scaledobject router"): out("True 3 20 prometheus")\n'
        'if line.startswith("get scaledobject billing"): out("False 2 8 redis-streams")\n'
        'if line.startswith("get hpa keda-hpa-router"): out("4")\n'
        'if line.startswith("get hpa"): out("2 2 10 35 70")\n',
    ).replace("rag-1 5,CrashLoopBackOff;", "gateway-1 0,CreateContainerConfigError;")
    assert "get scaledobject router" in fake and "CreateContainerConfigError" in fake
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(fake)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    out = _run({"KUBECTL": str(kubectl)}, "--timeout", "5s").stdout
    assert "router: 4 replicas (min 3, max 20), KEDA on prometheus" in out
    assert "billing: ScaledObject not Ready" in out
    assert "rag: 2 replicas (min 2, max 10), CPU 35% (target 70%)" in out  # no ScaledObject: the HPA
    assert "gateway-1: CreateContainerConfigError: a required Secret or Secret key is missing" in out
