"""A grpcurl-like client built on server reflection, for machines without grpcurl.

    python -m frugal.common.grpccall HOST:PORT list
    python -m frugal.common.grpccall HOST:PORT describe frugal.api.router.v1.RouterService
    python -m frugal.common.grpccall -H 'x-tenant-id: demo' -H 'x-session-id: s1' \
        -d '{"turn": {"text": "hi"}}' HOST:PORT frugal.api.router.v1.RouterService/Route

Unary and server-streaming methods; request and responses are protobuf JSON (like grpcurl).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


class ReflectionClient:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def services(self) -> list[str]:
        return sorted(self.db.get_services())

    def service(self, name: str) -> ServiceDescriptor:
        return self.pool.FindServiceByName(name)

    def method(self, full: str) -> MethodDescriptor:
        service, _, method = full.lstrip("/").rpartition("/")
        if not service:
            service, _, method = full.rpartition(".")
        return self.service(service).methods_by_name[method]

    def call(self, full: str, body: str, metadata: tuple[tuple[str, str], ...], timeout: float) -> Iterator[Any]:
        m = self.method(full)
        if m.client_streaming:
            raise SystemExit("client-streaming methods are not supported by this tool; use grpcurl")
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        request = json_format.Parse(body or "{}", req_cls())
        path = f"/{m.containing_service.full_name}/{m.name}"
        if m.server_streaming:
            stream = self.channel.unary_stream(path, request_serializer=req_cls.SerializeToString,
                                               response_deserializer=resp_cls.FromString)
            yield from stream(request, metadata=metadata, timeout=timeout)
        else:
            unary = self.channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                             response_deserializer=resp_cls.FromString)
            yield unary(request, metadata=metadata, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frugal.common.grpccall", description=__doc__.splitlines()[0])
    p.add_argument("-H", dest="headers", action="append", default=[], help="'name: value' metadata")
    p.add_argument("-d", dest="data", default="{}", help="request body as JSON")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("target")
    p.add_argument("verb", help="list | describe SERVICE | SERVICE/METHOD")
    p.add_argument("arg", nargs="?")
    args = p.parse_args(argv)
    client = ReflectionClient(args.target)
    try:
        if args.verb == "list":
            print("\n".join(client.services()))
        elif args.verb == "describe":
            svc = client.service(args.arg)
            for m in svc.methods:
                stream = "stream " if m.server_streaming else ""
                print(f"rpc {m.name}({m.input_type.full_name}) returns ({stream}{m.output_type.full_name})")
        else:
            md = tuple((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in args.headers))
            for resp in client.call(args.verb, args.data, md, args.timeout):
                print(json_format.MessageToJson(resp, preserving_proto_field_name=False))
    except grpc.RpcError as err:
        print(f"ERROR:\n  Code: {err.code().name}\n  Message: {err.details()}", file=sys.stderr)
        return 1
    except KeyError as err:
        print(f"not found: {err}", file=sys.stderr)
        return 1
    finally:
        client.channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
