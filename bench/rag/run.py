"""rag benchmarks: retrieval quality on Cranfield, then speed (latency, QPS, HNSW recall, 50 tenants).

    uv run python bench/rag/run.py            # everything (about 15-25 minutes on 2 shared cores)
    uv run python bench/rag/run.py --quick    # smoke run of both (< 60 s)

Each part also runs alone: bench/rag/quality.py, bench/rag/speed.py (same --quick flag).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import quality  # type: ignore[import-not-found]
import speed  # type: ignore[import-not-found]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run of both parts (< 60 s)")
    args = ap.parse_args()
    flags = ["--quick"] if args.quick else []
    started = time.perf_counter()
    print("### rag retrieval quality (Cranfield)")
    rc = int(await quality.main(flags))
    print("\n### rag speed")
    rc = rc or int(await speed.main(flags))
    print(f"\nrag benchmarks finished in {time.perf_counter() - started:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
