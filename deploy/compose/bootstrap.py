"""Compose bootstrap (the `bootstrap` one-shot of docker-compose.yml): after `make up` the mesh answers.

Registers the demo tenant in billing and ingests the demo knowledge base into rag, with the same code and
the same tenant as `make demo` (demo/tenant.json, through frugal.common.admin_client), then prints
how to join the demo room. Idempotent: the tenant is upserted, documents are deduplicated by content hash,
so it runs on every `make up`. Runs in the media-gateway image (it has the gRPC clients and the LiveKit
token API) with demo/kb mounted read-only; exits non-zero when billing or rag refuse, so that compose
reports the failure and the gateway (which waits for this step) does not start on an empty mesh.

    python bootstrap.py [--kb /demo/kb] [--room tenant_org_lumen_demo]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from pathlib import Path

DEFAULT_ROOM = "tenant_org_lumen_demo"


def join_hint(room: str) -> list[str]:
    """How to join `room` on the dev LiveKit server: the LiveKit CLI, or a token for any LiveKit client."""
    key = os.environ.get("LIVEKIT_API_KEY", "devkey")
    secret = os.environ.get("LIVEKIT_API_SECRET", "secret")
    public_url = os.environ.get("LIVEKIT_PUBLIC_URL", "ws://127.0.0.1:7880")
    lines = [
        f"join room {room} with the LiveKit CLI:",
        f"  lk room join --url {public_url} --api-key {key} --api-secret {secret} --identity you "
        f"--publish-demo {room}",
    ]
    try:
        from livekit import api

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the dev secret is shorter than a production key
            token = (api.AccessToken(key, secret).with_identity("you").with_name("You")
                     .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
        lines += ["or with this token (valid 6 h) in any LiveKit client, e.g. the Meet example app:",
                  f"  url {public_url}", f"  token {token}"]
    except ImportError:  # not the gateway image: the CLI line above is enough
        pass
    return lines


async def bootstrap(billing_addr: str, rag_addr: str, kb: Path) -> int:
    from frugal.common.admin_client import ingest_markdown_folder, load_policy, upsert_tenant

    policy = load_policy(kb.parent / "tenant.json")
    created = await upsert_tenant(billing_addr, policy)
    print(f"bootstrap: tenant {policy.tenant_id} {'registered' if created else 'already registered (updated)'}",
          flush=True)
    docs = await ingest_markdown_folder(rag_addr, kb, policy.tenant_id)
    for doc in docs:
        print(f"bootstrap:   {doc.document_id}: {doc.chunks} chunks, {doc.outcome}", flush=True)
    if not docs:
        print(f"bootstrap: no documents found in {kb}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", type=Path, default=Path(os.environ.get("DEMO_KB_DIR", "/demo/kb")))
    p.add_argument("--room", default=os.environ.get("DEMO_ROOM", DEFAULT_ROOM))
    args = p.parse_args(argv)
    if not args.kb.is_dir():
        print(f"bootstrap: knowledge base folder {args.kb} does not exist (mount demo/kb there)", file=sys.stderr)
        return 2
    billing = os.environ.get("BILLING_ADDR", "billing:50054")
    rag = os.environ.get("RAG_ADDR", "rag:50053")
    try:
        code = asyncio.run(bootstrap(billing, rag, args.kb))
    except Exception as err:  # a gRPC error or an unreachable service: one line, non-zero exit
        print(f"bootstrap failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if code == 0:
        print("\n".join(join_hint(args.room)), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
