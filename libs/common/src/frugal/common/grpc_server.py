"""gRPC server bootstrap: health, reflection, tenancy/metrics/logging interceptor, graceful shutdown.

Typical service main::

    app = GrpcApp(settings, services=[router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name])
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, app.server)
    app.on_shutdown(resources.aclose)
    await app.run_until_signal()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from frugal.common.errors import abort_for
from frugal.common.metrics import (
    GRPC_SERVER_HANDLED,
    GRPC_SERVER_HANDLING_SECONDS,
    GRPC_SERVER_IN_FLIGHT,
    GRPC_SERVER_STARTED,
    MetricsServer,
)
from frugal.common.settings import ServiceSettings
from frugal.common.tenancy import (
    REQUEST_ID_METADATA_KEY,
    SESSION_METADATA_KEY,
    TENANT_METADATA_KEY,
    RequestIdentity,
    TenancyError,
    reset_identity,
    set_identity,
    validate_session_id,
    validate_tenant_id,
)

log = logging.getLogger(__name__)

# Infrastructure services callable without tenant metadata.
EXEMPT_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Hook = Callable[[], Awaitable[None]]  # a start-up or shut-down step of a GrpcApp


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 3),
        ("grpc.so_reuseport", 0),
    ]


def _split_method(full: str) -> tuple[str, str]:
    _, service, method = full.split("/", 2) if full.count("/") >= 2 else ("", "unknown", full)
    return service, method


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


class _Rejection(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _MethodMetrics:
    """One method's labelled children of the shared gRPC server metrics."""

    def __init__(self, service: str, name: str, rpc_type: str) -> None:
        self._labels = {"grpc_service": service, "grpc_method": name, "grpc_type": rpc_type}
        self.started = GRPC_SERVER_STARTED.labels(**self._labels)
        self.in_flight = GRPC_SERVER_IN_FLIGHT.labels(grpc_service=service, grpc_method=name)
        self.seconds = GRPC_SERVER_HANDLING_SECONDS.labels(**self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = GRPC_SERVER_HANDLED.labels(**self._labels, grpc_code=code.name)
        return child


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Tenancy (x-tenant-id, x-session-id required and validated), request metrics and access logs.

    `tenant_optional_methods` lists full method names ("/pkg.Service/Method") that need a session id but
    no tenant (e.g. billing's ResolveTenant, whose caller does not know the tenant yet).
    """

    def __init__(self, tenant_optional_methods: Collection[str] = ()) -> None:
        self._tenant_optional = frozenset(tenant_optional_methods)
        self._metrics: dict[tuple[str, str], _MethodMetrics] = {}

    def _method_metrics(self, method: str, rpc_type: str) -> _MethodMetrics:
        """The method's labelled metric children, made once (a `labels()` lookup costs microseconds per call,
        four per RPC)."""
        mm = self._metrics.get((method, rpc_type))
        if mm is None:
            service, name = _split_method(method)
            mm = self._metrics[(method, rpc_type)] = _MethodMetrics(service, name, rpc_type)
        return mm

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_SERVICE_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        try:
            identity = self._identity(method, metadata)
        except _Rejection as rej:
            identity = None
            rejection: _Rejection | None = rej
        else:
            rejection = None
        return self._wrap(handler, method, identity, rejection)

    def _identity(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> RequestIdentity:
        tenant = _metadata_value(metadata, TENANT_METADATA_KEY)
        session = _metadata_value(metadata, SESSION_METADATA_KEY)
        request_id = _metadata_value(metadata, REQUEST_ID_METADATA_KEY) or uuid.uuid4().hex
        if session is None:
            raise _Rejection(grpc.StatusCode.UNAUTHENTICATED, f"missing {SESSION_METADATA_KEY} metadata")
        if tenant is None and method not in self._tenant_optional:
            raise _Rejection(grpc.StatusCode.UNAUTHENTICATED, f"missing {TENANT_METADATA_KEY} metadata")
        try:
            if tenant is not None:
                validate_tenant_id(tenant)
            validate_session_id(session)
        except TenancyError as err:
            raise _Rejection(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        return RequestIdentity(tenant_id=tenant, session_id=session, request_id=request_id[:128])

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        method: str,
        identity: RequestIdentity | None,
        rejection: _Rejection | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        mm = self._method_metrics(method, _rpc_type(handler))

        async def enter(context: grpc.aio.ServicerContext[Any, Any]) -> float:
            mm.started.inc()
            mm.in_flight.inc()
            if rejection is not None:
                log.info("rejected %s: %s", method, rejection.message)
                await context.abort(rejection.code, rejection.message)
            return time.perf_counter()

        def leave(context: grpc.aio.ServicerContext[Any, Any], started: float, error: BaseException | None) -> None:
            code = _final_code(context, error)
            mm.in_flight.dec()
            mm.handled(code).inc()
            elapsed = time.perf_counter() - started
            mm.seconds.observe(elapsed)
            level = logging.ERROR if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "%s %s", method, code.name, extra={"duration_ms": round(elapsed * 1000, 2)},
                        exc_info=error if level == logging.ERROR and not isinstance(error, grpc.aio.AbortError)
                        else None)

        behavior: Callable[..., Any]
        if handler.response_streaming:
            stream_inner: Any = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def stream_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                token = set_identity(identity) if identity else None
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    started = await enter(context)
                    result = stream_inner(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                except Exception as exc:
                    error = exc
                    if not isinstance(exc, grpc.aio.AbortError):
                        await abort_for(context, exc)
                    raise
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    leave(context, started, error)
                    if token is not None:
                        with contextlib.suppress(ValueError):
                            reset_identity(token)

            behavior = stream_behavior
        else:
            unary_inner: Any = handler.stream_unary if handler.request_streaming else handler.unary_unary

            async def unary_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = set_identity(identity) if identity else None
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    started = await enter(context)
                    return await unary_inner(request, context)
                except Exception as exc:
                    error = exc
                    if not isinstance(exc, grpc.aio.AbortError):
                        await abort_for(context, exc)
                    raise
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    leave(context, started, error)
                    if token is not None:
                        with contextlib.suppress(ValueError):
                            reset_identity(token)

            behavior = unary_behavior

        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def abort_unimplemented(context: grpc.aio.ServicerContext[Any, Any], what: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented yet")
    raise AssertionError("unreachable")  # abort raises


class GrpcApp:
    """A grpc.aio server with health, reflection, the tenancy interceptor, metrics and clean shutdown."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        services: Sequence[str],
        tenant_optional_methods: Collection[str] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        self.service_names = list(services)
        self.server = grpc.aio.server(
            interceptors=[ServerInterceptor(tenant_optional_methods), *interceptors],
            options=server_options(settings.max_message_bytes),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self._metrics = MetricsServer(settings.metrics_port) if settings.metrics_port else None
        self._hooks: list[Hook] = []
        self._start_hooks: list[Hook] = []
        self._stopped = asyncio.Event()
        self.port = 0
        self.metrics_port = 0

    def on_shutdown(self, hook: Hook) -> None:
        """Runs after the server stopped serving, in reverse order of registration."""
        self._hooks.append(hook)

    def on_started(self, hook: Hook) -> None:
        """Runs once the server serves and its health says SERVING, in order of registration (e.g. a task that
        keeps a service's own health status; it may set statuses from then on)."""
        self._start_hooks.append(hook)

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.grpc_host}:{self.settings.grpc_port}")
        if self._metrics is not None:
            self.metrics_port = self._metrics.start()
        await self.server.start()
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for hook in self._start_hooks:
            await hook()
        log.info(
            "%s serving gRPC on port %d, metrics on %s",
            self.settings.service_name, self.port, self.metrics_port or "(disabled)",
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, wait shutdown_delay_seconds (new RPCs still served), stop accepting, drain in-flight
        RPCs for up to `grace` seconds, cancel what is left, then release resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay_seconds > 0:
            await asyncio.sleep(self.settings.shutdown_delay_seconds)
        log.info("draining for up to %.1fs", grace)
        await self.server.stop(grace)
        for hook in reversed(self._hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        if self._metrics is not None:
            self._metrics.stop()
        log.info("%s stopped", self.settings.service_name)

    async def run_until_signal(self) -> None:
        """Starts, serves until SIGTERM/SIGINT (or until stop() is called elsewhere), then stops."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        try:
            await self.start()
            waiters = [asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(self._stopped.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def service_full_name(file_descriptor: Any, service: str) -> str:
    return str(file_descriptor.services_by_name[service].full_name)
