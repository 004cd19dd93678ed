"""The benches that restate the services' SQL run to the end on a tiny load. `bench/rag/latency.py` and
`bench/rag/speed.py` bulk-load chunks with their own INSERTs (per-document ingest is too slow for 100k chunks);
after rag migration 0003 made `tsv` and `lex_len` NOT NULL both stopped at load, for two sessions and three
sessions, and nothing noticed, because no test ran them. Figures are not checked here (benchmarks live in
`make bench`), only that every stage runs and prints them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIGURE = r"p50\s+\d+\.\d+ ms\s+p95\s+\d+\.\d+ ms\s+p99\s+\d+\.\d+ ms"


def test_the_rag_latency_bench_loads_and_measures_at_both_dimensions() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rag" / "latency.py"), "--quick", "--sizes", "300", "--dims", "384,1024"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )
    if proc.returncode == 0 and "SKIP: Cranfield data not found" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, f"bench/rag/latency.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for dims in (384, 1024):
        assert re.search(rf"== 300 chunks, \d+ tenants .*{dims} dimensions", proc.stdout), proc.stdout
    for stage in ("cold", "warm", "longest query"):
        assert len(re.findall(rf"{stage} .*{FIGURE}", proc.stdout)) == 2, (stage, proc.stdout)


def test_the_rag_synthetic_speed_bench_loads_and_measures_both_layouts() -> None:
    """Synthetic data (no download, runs everywhere): one tenant, then 50 under RLS, 4k chunks each."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rag" / "speed.py"), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"bench/rag/speed.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert re.search(r"== 4,000 chunks, 50 tenants under RLS", proc.stdout), proc.stdout
    for stage in ("Retrieve hybrid, cold", "Retrieve hybrid, warm", "Retrieve vector only, warm",
                  "Retrieve lexical \\(BM25\\) only"):
        assert len(re.findall(rf"{stage}.*{FIGURE}", proc.stdout)) == 2, (stage, proc.stdout)
    assert len(re.findall(r"recall@10 \d\.\d{4}", proc.stdout)) >= 4, proc.stdout
