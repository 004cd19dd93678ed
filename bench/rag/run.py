"""rag benchmarks: retrieval quality on Cranfield, ingest throughput (before/after in one run), and
Retrieve latency on real text (384 and 1024 dimensions, 10k and 100k chunks, 50 tenants; cold, warm
and longest-query figures apart).

    uv run python bench/rag/run.py            # everything (30-60 minutes on 2 shared cores)
    uv run python bench/rag/run.py --quick    # smoke run of each part (a few minutes)

Each part also runs alone (same --quick flag): bench/rag/quality.py, bench/rag/ingest.py,
bench/rag/latency.py; bench/rag/roofline.py prints the fp32 compute ceiling of ingest (also part of
ingest.py); bench/rag/speed.py measures HNSW recall and QPS on synthetic vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import ingest  # type: ignore[import-not-found]
import latency  # type: ignore[import-not-found]
import quality  # type: ignore[import-not-found]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run of each part")
    args = ap.parse_args()
    flags = ["--quick"] if args.quick else []
    started = time.perf_counter()
    print("### rag retrieval quality (Cranfield)")
    rc = int(await quality.main(flags))
    print("\n### rag ingest throughput")
    rc = rc or int(await ingest.main(flags))
    print("\n### rag retrieve latency (real text)")
    rc = rc or int(await latency.main(flags))
    print(f"\nrag benchmarks finished in {time.perf_counter() - started:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
