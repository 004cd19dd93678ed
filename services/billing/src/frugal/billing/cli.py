"""Command line of the billing service.

    python -m frugal.billing                      serve (gRPC + ledger consumer), same as `serve`
    python -m frugal.billing migrate              apply migrations (MIGRATION_DATABASE_URL)
    python -m frugal.billing consume              run the ledger consumer alone (no gRPC)
    python -m frugal.billing tenants upsert --id demo --name "Demo Inc" --budget 50 [--mix 0.6,0.3,0.1] ...
    python -m frugal.billing tenants get --id demo
    python -m frugal.billing tenants resolve tenant_demo_standup
    python -m frugal.billing usage --id demo [--start 2026-11-01T00:00:00Z] [--end ...]
    python -m frugal.billing budget --id demo
    python -m frugal.billing dlq list [--count 20]
    python -m frugal.billing dlq replay (--all | ID ...)

The tenants/usage/budget commands are gRPC clients of BILLING_ADDR (default 127.0.0.1:50054); `dlq` talks
to REDIS_URL directly; `consume` and `migrate` use the service's own environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.common.v1 import common_pb2
from frugal.billing.config import Settings
from frugal.billing.consumer import ConsumerConfig, LedgerConsumer
from frugal.billing.ledger import TenantWriteResult
from frugal.billing.server import build_app, migrate
from frugal.billing.state import StatePublisher
from frugal.common.db import create_pool
from frugal.common.grpc_client import create_channel, outgoing_metadata
from frugal.common.logging import configure_logging
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.service import run_service
from frugal.common.settings import load_settings

TIERS = {"lite": common_pb2.TIER_LITE, "standard": common_pb2.TIER_STANDARD, "premium": common_pb2.TIER_PREMIUM,
         "none": common_pb2.TIER_UNSPECIFIED}
# Exit status of a consumer stopped by --exit-after-commits (a simulated crash: nothing acknowledged).
CRASH_EXIT_CODE = 86


def _print(msg: Any) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


def _metadata(tenant: str | None, session: str) -> tuple[tuple[str, str], ...]:
    return outgoing_metadata(tenant_id=tenant, session_id=session)


def _policy_from_args(args: argparse.Namespace, base: billing_pb2.TenantPolicy | None) -> billing_pb2.TenantPolicy:
    policy = billing_pb2.TenantPolicy()
    if base is not None:
        policy.CopyFrom(base)
    policy.tenant_id = args.id
    for attr, field in (("name", "display_name"), ("plan", "plan"), ("budget", "monthly_budget_usd"),
                        ("rpm", "requests_per_minute"), ("tpm", "tokens_per_minute"),
                        ("instructions", "instructions"), ("downgrade_at", "downgrade_at"),
                        ("refuse_at", "refuse_at")):
        value = getattr(args, attr)
        if value is not None:
            setattr(policy, field, value)
    if args.max_tier is not None:
        policy.max_tier = TIERS[args.max_tier]
    if args.pinned_tier is not None:
        policy.pinned_tier = TIERS[args.pinned_tier]
    if args.kb is not None:
        policy.knowledge_base_enabled = args.kb
    if args.mix is not None:
        if args.mix == "default":
            policy.ClearField("target_mix")
        else:
            parts = [float(x) for x in args.mix.split(",")]
            if len(parts) != 3:
                raise SystemExit("--mix takes three fractions: lite,standard,premium (or 'default')")
            policy.target_mix.CopyFrom(common_pb2.TierMix(lite=parts[0], standard=parts[1], premium=parts[2]))
    return policy


async def _client_command(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    addr = args.addr or settings.billing_addr
    async with create_channel(addr) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        try:
            if args.command == "tenants" and args.tenants_command == "resolve":
                _print(await stub.ResolveTenant(billing_pb2.ResolveTenantRequest(room_name=args.room),
                                                metadata=_metadata(None, args.session), timeout=10))
            elif args.command == "tenants" and args.tenants_command == "get":
                _print(await stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(),
                                                  metadata=_metadata(args.id, args.session), timeout=10))
            elif args.command == "tenants":
                md = _metadata(args.id, args.session)
                base: billing_pb2.TenantPolicy | None = None
                try:
                    base = (await stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(), metadata=md,
                                                       timeout=10)).policy
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                policy = _policy_from_args(args, base)
                _print(await stub.UpsertTenant(billing_pb2.UpsertTenantRequest(policy=policy), metadata=md,
                                               timeout=10))
            elif args.command == "usage":
                req = billing_pb2.GetUsageRequest()
                if args.start:
                    req.start.FromDatetime(datetime.fromisoformat(args.start.replace("Z", "+00:00")))
                if args.end:
                    req.end.FromDatetime(datetime.fromisoformat(args.end.replace("Z", "+00:00")))
                _print(await stub.GetUsage(req, metadata=_metadata(args.id, args.session), timeout=30))
            elif args.command == "budget":
                _print(await stub.GetBudgetState(billing_pb2.GetBudgetStateRequest(),
                                                 metadata=_metadata(args.id, args.session), timeout=10))
        except grpc.aio.AioRpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


async def _consume(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    await migrate(settings)
    pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max,
                             application_name="frugal-billing-consumer")
    redis = create_redis(settings.cost_redis_url)
    commits = 0

    async def crash_after(_result: TenantWriteResult) -> None:
        nonlocal commits
        commits += 1
        if args.exit_after_commits and commits >= args.exit_after_commits:
            # Simulated crash between the ledger commit and XACK: no cleanup, nothing acknowledged.
            sys.stdout.flush()
            os._exit(CRASH_EXIT_CODE)

    publisher = StatePublisher(pool, redis, count_offline=settings.budget_count_offline,
                               budget_ttl_s=settings.budget_state_ttl_seconds)
    consumer = LedgerConsumer(
        pool, redis, default_catalog(settings.price_catalog_path),
        ConsumerConfig.from_settings(settings, consumer=args.consumer),
        publisher=publisher, after_commit=crash_after if args.exit_after_commits else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await consumer.start()
        print(f"consumer {consumer.config.consumer} reading {consumer.config.stream} "
              f"(group {consumer.config.group})", flush=True)
        task = consumer.task
        assert task is not None
        await asyncio.wait([asyncio.ensure_future(stop.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await consumer.aclose()
        await redis.aclose()
        await pool.close()
    t = consumer.totals
    print(json.dumps({"read": t.read, "written": t.written, "duplicates": t.duplicates,
                      "dead_lettered": t.dead_lettered}), flush=True)
    return 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def _dlq(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    redis = create_redis(settings.cost_redis_url)
    try:
        if args.dlq_command == "list":
            entries: Any = await redis.xrevrange(settings.ledger_dlq_stream, count=args.count)
            for sid, fields in entries:
                row = {_text(k): _text(v) for k, v in fields.items()}
                print(json.dumps({"dlq_id": _text(sid), **row}))
            return 0
        ids: list[str] = list(args.ids)
        if args.all:
            everything: Any = await redis.xrange(settings.ledger_dlq_stream)
            ids = [_text(sid) for sid, _ in everything]
        replayed = 0
        for sid in ids:
            found: Any = await redis.xrange(settings.ledger_dlq_stream, min=sid, max=sid)
            if not found:
                print(f"{sid}: not in {settings.ledger_dlq_stream}", file=sys.stderr)
                continue
            fields = found[0][1]
            if b"event" not in fields:
                print(f"{sid}: no event payload to replay ({_text(fields.get(b'reason', b'?'))})", file=sys.stderr)
                continue
            pipe = redis.pipeline(transaction=True)
            pipe.xadd(settings.ledger_stream, {"event": fields[b"event"]})
            pipe.xdel(settings.ledger_dlq_stream, sid)
            await pipe.execute()
            replayed += 1
        print(f"replayed {replayed} dead-lettered event(s) to {settings.ledger_stream}")
        return 0
    finally:
        await redis.aclose()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m frugal.billing", description="Frugal Mesh billing service")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve gRPC and run the ledger consumer (default)")
    sub.add_parser("migrate", help="apply the billing migrations with MIGRATION_DATABASE_URL")
    c = sub.add_parser("consume", help="run the ledger consumer alone")
    c.add_argument("--consumer", default=None, help="consumer name (default LEDGER_CONSUMER_NAME or host-pid)")
    c.add_argument("--exit-after-commits", type=int, default=0,
                   help="fault injection: exit abruptly right after the Nth tenant commit, before XACK")

    def client_args(sp: argparse.ArgumentParser, tenant: bool = True) -> None:
        if tenant:
            sp.add_argument("--id", required=True, help="tenant id (sent as x-tenant-id)")
        sp.add_argument("--addr", default=None, help="billing address (default BILLING_ADDR)")
        sp.add_argument("--session", default="cli", help="x-session-id")

    t = sub.add_parser("tenants", help="manage tenants through the gRPC API")
    tsub = t.add_subparsers(dest="tenants_command", required=True)
    up = tsub.add_parser("upsert", help="create or update a tenant (unset flags keep their current value)")
    client_args(up)
    up.add_argument("--name")
    up.add_argument("--plan")
    up.add_argument("--budget", type=float, help="monthly budget, USD (0 suspends the tenant, -1 = no cap)")
    up.add_argument("--rpm", type=int)
    up.add_argument("--tpm", type=int)
    up.add_argument("--mix", help="target tier mix lite,standard,premium, e.g. 0.6,0.3,0.1 (or 'default')")
    up.add_argument("--max-tier", choices=sorted(TIERS))
    up.add_argument("--pinned-tier", choices=sorted(TIERS))
    up.add_argument("--instructions")
    up.add_argument("--kb", action=argparse.BooleanOptionalAction, default=None, help="knowledge base on/off")
    up.add_argument("--downgrade-at", type=float)
    up.add_argument("--refuse-at", type=float)
    client_args(tsub.add_parser("get", help="the tenant's policy"))
    rs = tsub.add_parser("resolve", help="room name -> tenant")
    rs.add_argument("room")
    client_args(rs, tenant=False)
    u = sub.add_parser("usage", help="cost, baseline and savings from the ledger")
    client_args(u)
    u.add_argument("--start")
    u.add_argument("--end")
    client_args(sub.add_parser("budget", help="month-to-date budget state"))
    d = sub.add_parser("dlq", help="inspect or replay the dead-letter stream")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--count", type=int, default=20)
    dr = dsub.add_parser("replay", help="append dead-lettered events back to the stream and remove them")
    dr.add_argument("ids", nargs="*")
    dr.add_argument("--all", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in (None, "serve"):
        run_service(Settings, build_app)
        return 0
    if args.command == "migrate":
        settings = load_settings(Settings)
        if not settings.migration_database_url:
            print("MIGRATION_DATABASE_URL is not set", file=sys.stderr)
            return 2
        applied = asyncio.run(migrate(settings))
        print(f"billing: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
        return 0
    if args.command == "consume":
        settings = load_settings(Settings)
        configure_logging("billing-consumer", settings.log_level, settings.log_format)
        return asyncio.run(_consume(args))
    if args.command == "dlq":
        if args.dlq_command == "replay" and not args.all and not args.ids:
            print("dlq replay: give ids or --all", file=sys.stderr)
            return 2
        return asyncio.run(_dlq(args))
    return asyncio.run(_client_command(args))
