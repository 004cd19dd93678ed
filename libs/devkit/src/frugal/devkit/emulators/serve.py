"""Run the LLM emulators as a standalone process, for benchmarks and manual runs.

    python -m frugal.devkit.emulators.serve [--anthropic-port N] [--gemini-port N] [--latency-s S]

Prints one line `ready anthropic=URL gemini=URL` when both listen, then serves until SIGTERM or SIGINT.
A separate process keeps the emulator's own CPU out of the process being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from frugal.devkit.emulators.anthropic import AnthropicEmulator
from frugal.devkit.emulators.gemini import GeminiEmulator


async def serve(anthropic_port: int, gemini_port: int, latency_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        AnthropicEmulator(port=anthropic_port, latency_s=latency_s) as anthropic_emu,
        GeminiEmulator(port=gemini_port, latency_s=latency_s) as gemini_emu,
    ):
        print(f"ready anthropic={anthropic_emu.base_url} gemini={gemini_emu.base_url}", flush=True)
        while not stop.is_set():
            # The request record is for tests; a long benchmark would only grow it.
            anthropic_emu.requests.clear()
            gemini_emu.requests.clear()
            try:
                await asyncio.wait_for(stop.wait(), timeout=5.0)
            except TimeoutError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frugal.devkit.emulators.serve", description=__doc__.splitlines()[0])
    p.add_argument("--anthropic-port", type=int, default=0)
    p.add_argument("--gemini-port", type=int, default=0)
    p.add_argument("--latency-s", type=float, default=0.0, help="delay before the response headers")
    args = p.parse_args(argv)
    asyncio.run(serve(args.anthropic_port, args.gemini_port, args.latency_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
