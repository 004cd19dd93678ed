"""python -m frugal.gateway [serve | replay DIR | console [--text] | dev | connect ...]

- (no command) or `serve`: health and metrics over gRPC, plus the LiveKit worker when LIVEKIT_URL is set.
- `replay DIR`: replays a recorded session (see frugal.gateway.replay.spec) against the mesh, no LiveKit.
- `console`, `dev`, `connect`, `download-files`: livekit-agents' own CLI around this worker
  (`console --text` chats in the terminal; console sessions use the CONSOLE_ROOM tenant).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from frugal.common.logging import configure_logging
from frugal.common.settings import load_settings
from frugal.gateway.config import Settings

log = logging.getLogger("frugal.gateway")

LIVEKIT_COMMANDS = ("console", "dev", "connect", "download-files")


def replay_main(argv: list[str]) -> int:
    from frugal.gateway.clients import TenantRejected
    from frugal.gateway.replay.runner import run_replay
    from frugal.gateway.replay.spec import SessionFormatError, SessionSpec

    p = argparse.ArgumentParser(prog="python -m frugal.gateway replay",
                                description="Replay a recorded session through the agent against the running mesh.")
    p.add_argument("session_dir")
    p.add_argument("--speed", type=float, default=1.0, help="timeline speed-up (spoken WAV turns stay real time)")
    p.add_argument("--no-costs", action="store_true", help="do not emit the gateway's STT/TTS cost events")
    args = p.parse_args(argv)
    settings = load_settings(Settings)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    try:
        spec = SessionSpec.load(args.session_dir)
    except SessionFormatError as err:
        print(f"replay: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_replay(spec, settings, speed=args.speed, emit_costs=not args.no_costs))
    except TenantRejected as err:
        print(f"replay: {err}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "serve"
    if command == "replay":
        return replay_main(args[1:])
    if command in LIVEKIT_COMMANDS:
        from livekit.agents import cli

        from frugal.gateway.worker import build_server

        settings = load_settings(Settings)
        sys.argv = [sys.argv[0], *args]
        cli.run_app(build_server(settings))
        return 0
    if command not in ("serve", "start"):
        print(__doc__, file=sys.stderr)
        return 2
    from frugal.gateway.lifecycle import serve

    settings = load_settings(Settings)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
