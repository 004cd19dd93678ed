"""Ingest throughput: the compute ceiling (bench/rag/roofline.py), the encoder runtimes compared on the
same weights, then IngestDocument through the service, before (NumPy forward pass, one batch of up to 32
mixed-length texts at a time, documents one after another: the old path), the previous shipped path
(onnxruntime on the fused graph, one worker per core, batches of 8 texts matched by length across the
documents in flight, 16 documents in flight) and after (the same, each forward pass holding at most 256
padded positions: long chunks one by one, no padding), in one run on the same Cranfield abstracts.

    uv run python bench/rag/ingest.py            # 400 documents per configuration
    uv run python bench/rag/ingest.py --quick    # 60 documents

Every rate is chunks per second of wall time on this machine, whatever else runs on it (the load average
is printed beside them), and also per CPU-second spent by the rag process and PostgreSQL together, from
which "quiet" gives the rate two unshared cores would reach (2 / CPU-seconds per chunk). Vectors of the
two runtimes must agree to cosine >= 0.9999.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil
from _stack import bench_stack, running_service  # type: ignore[import-not-found]
from roofline import CRANFIELD, Roofline, bench_documents, chunk_texts, roofline  # type: ignore[import-not-found]

from frugal.api.rag.v1 import rag_pb2
from frugal.encoder.minilm import MiniLMEncoder, limit_blas_threads


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f}"


def _postgres(dsn: str) -> list[psutil.Process]:
    """The postmaster listening on the DSN's port (its command line names the port) and its backends."""
    port = str(urlsplit(dsn).port)
    for proc in psutil.process_iter(["name", "cmdline"]):
        args = proc.info["cmdline"] or []
        if (proc.info["name"] or "").startswith("postgres") and any(a == port or a.endswith(f" {port}") for a in args):
            return [proc, *proc.children(recursive=True)]
    return []


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass  # a backend that exited: its time is lost (the pool keeps its backends)
    return total


@contextmanager
def cpu_meter(dsn: str) -> Iterator[list[float]]:
    """CPU-seconds of this process (the service runs in it) and of the PostgreSQL processes."""
    out = [0.0, 0.0]  # rag process, PostgreSQL
    me = psutil.Process()
    pg0 = _postgres(dsn)
    start = (_cpu([me]), _cpu(pg0))
    try:
        yield out
    finally:
        pg = {p.pid: p for p in [*pg0, *_postgres(dsn)]}
        out[0] = _cpu([me]) - start[0]
        out[1] = _cpu(list(pg.values())) - start[1]


def encoder_comparison(texts: list[str], ceiling: Roofline) -> tuple[str, float]:
    """Chunks/s of each runtime, 1 and 2 threads encoding concurrently; returns the fastest exact one and
    its best chunks per CPU-second."""
    limit_blas_threads(1)
    encs = {rt: MiniLMEncoder(runtime=rt) for rt in ("numpy", "onnx")}
    ref, _ = encs["numpy"].encode(texts, batch_size=8)
    got, _ = encs["onnx"].encode(texts, batch_size=8)
    cos = float(np.min(np.sum(ref * got, axis=1)))
    print(f"  onnxruntime vs NumPy on the same weights: min cosine over {len(texts)} chunks = {cos:.7f} "
          f"({'exact' if cos >= 0.9999 else 'NOT EXACT'})")
    tokens = statistics.mean(len(t) for t in encs["numpy"].tokenize(texts))
    print(f"  {len(texts)} chunks, {tokens:.0f} word pieces each on average, batches of 8 sorted by length; {load()}")
    best, best_rate = "numpy", 0.0
    for rt, enc in encs.items():
        enc.encode(texts[:8])
        for workers in (1, 2):
            parts = [texts[i::workers] for i in range(workers)]
            cpu: list[float] = [0.0] * workers

            def run(i: int, e: MiniLMEncoder = enc, parts: list[list[str]] = parts, cpu: list[float] = cpu) -> None:
                c0 = time.thread_time()
                e.encode(parts[i], batch_size=8)
                cpu[i] = time.thread_time() - c0

            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run, range(workers)))
            rate = len(texts) / (time.perf_counter() - t0)
            per_cpu = len(texts) / sum(cpu)
            print(f"  {rt:<6} {workers} thread(s) x 1 BLAS/ORT thread: {rate:6.1f} chunks/s wall, {per_cpu:5.1f} per "
                  f"CPU-second (quiet 2 cores: {2 * per_cpu:5.1f} = {200 * per_cpu / ceiling.quiet_ceiling:3.0f}% of "
                  f"the {ceiling.quiet_ceiling:.1f} ceiling)")
            if per_cpu > best_rate and (rt == "numpy" or cos >= 0.9999):
                best, best_rate = rt, per_cpu
    print(f"  fastest exact runtime here: {best}")
    return best, best_rate


async def ingest_rate(stack: Any, docs: list[tuple[str, str]], concurrency: int,
                      **settings: Any) -> tuple[float, int, float, float]:
    """(chunks/s wall, chunks, CPU-seconds per chunk of the rag process, of PostgreSQL)."""
    async with running_service(stack, **settings) as svc:
        tenant = f"bench_ingest_{uuid.uuid4().hex[:6]}"
        meta = (("x-tenant-id", tenant), ("x-session-id", "bench-ingest"))
        await svc.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id="warmup", content_type="text/plain", content=b"warm up the encoder"), metadata=meta)
        it = iter(docs)
        chunks = 0

        async def worker() -> None:
            nonlocal chunks
            for doc_id, text in it:
                r = await svc.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
                    document_id=doc_id, title="", content_type="text/plain", content=text.encode()),
                    metadata=meta, timeout=600)
                chunks += r.chunk_count

        with cpu_meter(stack.admin_dsn) as cpu:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
        return chunks / elapsed, chunks, cpu[0] / max(chunks, 1), cpu[1] / max(chunks, 1)


def _line(label: str, rate: float, chunks: int, rag_cpu: float, pg_cpu: float, ceiling: Roofline) -> str:
    quiet = 2 / (rag_cpu + pg_cpu)
    return (f"  {label}:\n    {rate:6.1f} chunks/s wall ({chunks} chunks; {load()}); CPU-ms per chunk: rag "
            f"{1000 * rag_cpu:.1f} + PostgreSQL {1000 * pg_cpu:.1f} -> quiet 2 cores {quiet:5.1f} chunks/s = "
            f"{100 * quiet / ceiling.quiet_ceiling:3.0f}% of the fp32 ceiling")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 documents per configuration")
    args = ap.parse_args(argv)
    if not (CRANFIELD / "cran.all.1400").is_file():
        print(f"SKIP: Cranfield data not found at {CRANFIELD}")
        return 0
    n = 60 if args.quick else 400
    docs = bench_documents(n)
    texts = chunk_texts(docs)
    print("## compute ceiling (fp32 all-MiniLM-L6-v2 on this CPU, the bench's own chunks)")
    ceiling = roofline(texts, MiniLMEncoder(runtime="numpy"), seconds=0.5 if args.quick else 2.0)
    for line in ceiling.lines():
        print(line)
    print("\n## encoder runtimes (same all-MiniLM-L6-v2 weights)")
    best, encoder_per_cpu = encoder_comparison(texts[: min(len(texts), 160)], ceiling)
    print(f"\n## IngestDocument through the service, {n} Cranfield abstracts ({len(texts)} chunks)")
    async with bench_stack() as stack:
        before = await ingest_rate(stack, docs, 1, encoder_runtime="numpy", local_encoder_workers=1,
                                   local_batch_size=32, local_length_window=0, local_batch_tokens=0)
        print(_line("BEFORE (NumPy, 1 worker, batches of <= 32 in arrival order, 1 document at a time)", *before,
                    ceiling))
        mid = await ingest_rate(stack, [(f"{d}-m", t) for d, t in docs], 8, encoder_runtime=best,
                                local_encoder_workers=2, local_batch_size=16, local_length_window=0,
                                local_batch_tokens=0)
        print(_line(f"MIDDLE ({best}, 2 workers, batches of <= 16 in arrival order, 8 in flight)", *mid, ceiling))
        prev = await ingest_rate(stack, [(f"{d}-p", t) for d, t in docs], 16, encoder_runtime=best,
                                 local_encoder_workers=2, local_batch_size=8, local_length_window=64,
                                 local_batch_tokens=0)
        print(_line(f"PREVIOUS ({best}, 2 workers, batches of <= 8 matched by length, 16 in flight)", *prev,
                    ceiling))
        after = await ingest_rate(stack, [(f"{d}-b", t) for d, t in docs], 16, encoder_runtime=best,
                                  local_encoder_workers=2, local_batch_size=8, local_length_window=64,
                                  local_batch_tokens=256)
        print(_line(f"AFTER  ({best}, as PREVIOUS, at most 256 padded positions per forward pass)", *after,
                    ceiling))
        print(f"  speed-up x{after[0] / before[0]:.2f} wall, x{sum(before[2:]) / sum(after[2:]):.2f} per CPU-second")
        quiet = 2 / sum(after[2:])
        enc_quiet = 2 * encoder_per_cpu
        met = "met" if after[0] >= 50 else "NOT met"
        print(f"  target >= 50 chunks/s: {met} here (shared machine); quiet 2 cores: "
              f"service {quiet:.1f} chunks/s, the encoder alone {enc_quiet:.1f} "
              f"({100 * enc_quiet / ceiling.quiet_ceiling:.0f}% of the {ceiling.quiet_ceiling:.1f} fp32 matrix-product "
              "ceiling)")
        if ceiling.quiet_ceiling < 50:
            print("  50 chunks/s is BEYOND the fp32 ceiling at the shipped chunk size")
        else:
            share = 100 * 50 / ceiling.quiet_ceiling
            own = 1000 * (sum(after[2:]) - 1 / encoder_per_cpu)
            reach = "reaches" if enc_quiet >= 50 else "falls short of"
            enc_share = 100 * enc_quiet / ceiling.quiet_ceiling
            both = 1000 / encoder_per_cpu + own  # CPU-ms per chunk: the encoder's and the service's
            verdict = ("so 50 is within reach on two quiet cores" if both <= 40 else
                       f"together {both:.0f} CPU-ms per chunk, more than the 40 that 50 chunks/s allows on two "
                       "cores: 50 is out of reach at fp32 at the shipped chunk size")
            print(f"  50 chunks/s needs the matrix products at {share:.0f}% of peak GEMM on both cores with nothing "
                  f"else running; the exact fp32 encoder alone {reach} that ({enc_share:.0f}%"
                  f"; the rest is softmax, GELU, LayerNorm, small attention GEMMs), and the service's own work "
                  f"(chunking, tokenising, gRPC, PostgreSQL) adds {own:.0f} CPU-ms per chunk on the same two cores: "
                  f"{verdict}")
            left = 2000 / 50 - own  # CPU-ms per chunk left for the encoder at 50 chunks/s on 2 cores
            if left > 0:
                need_rate = ceiling.gflop_per_chunk / (left / 1000)
                print(f"  arithmetic: 2 cores / 50 chunks/s = 40 CPU-ms per chunk; minus the service's {own:.0f} "
                      f"leaves {left:.0f} CPU-ms for {ceiling.gflop_per_chunk:.2f} GFLOP = {need_rate:.0f} GFLOP/s "
                      "per core, vs "
                      f"the measured fp32 GEMM peak of {ceiling.best_cpu_rate:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
