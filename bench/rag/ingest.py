"""Ingest throughput: the encoder runtimes compared on the same weights, then IngestDocument through the
service, before (NumPy forward pass, one batch at a time, documents one after another: the old path)
and after (the fastest exact runtime, one worker per core, batches across documents, 8 documents in
flight), in one run on the same Cranfield abstracts.

    uv run python bench/rag/ingest.py            # 400 documents per configuration
    uv run python bench/rag/ingest.py --quick    # 60 documents

Every figure is chunks per second of wall time on this machine, whatever else runs on it (the load
average is printed beside them). Vectors of the two runtimes must agree to cosine >= 0.9999.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import numpy as np
from _stack import SHARED_DATA, bench_stack, running_service  # type: ignore[import-not-found]
from quality import load_cranfield  # type: ignore[import-not-found]

from frugal.api.rag.v1 import rag_pb2
from frugal.encoder.minilm import MiniLMEncoder, limit_blas_threads

CRANFIELD = SHARED_DATA / "ir" / "cranfield"


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f}"


def encoder_comparison(texts: list[str]) -> str:
    """Chunks/s of each runtime, 1 and 2 threads encoding concurrently; returns the fastest exact one."""
    limit_blas_threads(1)
    encs = {rt: MiniLMEncoder(runtime=rt) for rt in ("numpy", "onnx")}
    ref, _ = encs["numpy"].encode(texts[:64])
    got, _ = encs["onnx"].encode(texts[:64])
    cos = float(np.min(np.sum(ref * got, axis=1)))
    print(f"  onnxruntime vs NumPy on the same weights: min cosine over 64 chunks = {cos:.7f} "
          f"({'exact' if cos >= 0.9999 else 'NOT EXACT'})")
    tokens = sum(len(t) for t in encs["numpy"].tokenize(texts)) / len(texts)
    print(f"  {len(texts)} chunks, {tokens:.0f} word pieces each on average; {load()}")
    best, best_rate = "numpy", 0.0
    for rt, enc in encs.items():
        enc.encode(texts[:8])
        for workers in (1, 2):
            from concurrent.futures import ThreadPoolExecutor

            parts = [texts[i::workers] for i in range(workers)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda p, e=enc: e.encode(p, batch_size=16), parts))
            rate = len(texts) / (time.perf_counter() - t0)
            print(f"  {rt:<6} {workers} thread(s) x 1 BLAS/ORT thread: {rate:6.1f} chunks/s")
            if rate > best_rate and (rt == "numpy" or cos >= 0.9999):
                best, best_rate = rt, rate
    print(f"  fastest exact runtime here: {best}")
    return best


async def ingest_rate(stack: Any, docs: list[tuple[str, str]], concurrency: int, **settings: Any) -> tuple[float, int]:
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

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return chunks / (time.perf_counter() - t0), chunks


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 documents per configuration")
    args = ap.parse_args(argv)
    if not (CRANFIELD / "cran.all.1400").is_file():
        print(f"SKIP: Cranfield data not found at {CRANFIELD}")
        return 0
    data = load_cranfield(CRANFIELD)
    n = 60 if args.quick else 400
    docs = [(f"cran-{i}", f"{t}\n\n{w}") for i, (t, w) in sorted(data.docs.items())[:n]]
    print("## encoder runtimes (same all-MiniLM-L6-v2 weights)")
    best = encoder_comparison([text for _, text in docs[: min(n, 96)]])
    print(f"\n## IngestDocument through the service, {n} Cranfield abstracts (title + text, one chunk or more each)")
    async with bench_stack() as stack:
        before, c1 = await ingest_rate(stack, docs, 1, encoder_runtime="numpy", local_encoder_workers=1,
                                       local_batch_size=32)
        print(f"  BEFORE (NumPy, 1 encoder worker, documents one at a time): {before:6.1f} chunks/s ({c1} chunks; "
              f"{load()})")
        after, c2 = await ingest_rate(stack, [(f"{d}-b", t) for d, t in docs], 8, encoder_runtime=best,
                                      local_encoder_workers=2, local_batch_size=16)
        print(f"  AFTER  ({best}, 2 encoder workers, batches across 8 documents in flight): {after:6.1f} chunks/s "
              f"({c2} chunks; {load()})")
        print(f"  speed-up x{after / before:.2f}; target >= 50 chunks/s: {'met' if after >= 50 else 'NOT met'} "
              "(see the load average: the machine is shared)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
