"""One mapping from failures to gRPC status codes, for every service.

Handlers raise; they do not pick status codes. `GrpcApp`'s interceptor turns whatever escapes a handler into
a status with `status_for`: our own `ServiceError`s carry their code, infrastructure failures map by kind
(a database statement cancelled by its timeout is DEADLINE_EXCEEDED, a lost connection UNAVAILABLE, a
serialization conflict ABORTED), and anything unexpected is INTERNAL with the exception's type only, so no
internal detail leaks to callers. Call `abort_for` where a handler must end the call itself.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, NoReturn

import grpc


class ServiceError(Exception):
    """A failure the caller should see as `code` with this message."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a caller sees for `err`."""
    if isinstance(err, ServiceError):
        return err.code, str(err)
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "timed out before the deadline"

    import asyncpg
    import pydantic
    import redis.exceptions

    if isinstance(err, asyncpg.QueryCanceledError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "database statement timed out (deadline)"
    if isinstance(err, (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)):
        return grpc.StatusCode.ABORTED, "concurrent update conflict; retry"
    if isinstance(err, asyncpg.ProgramLimitExceededError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"input exceeds a database limit: {err}"
    if isinstance(err, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)):
        return grpc.StatusCode.UNAVAILABLE, f"database unavailable: {type(err).__name__}"
    if isinstance(err, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {type(err).__name__}"
    if isinstance(err, pydantic.ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err).splitlines()[0] if str(err) else "invalid input"
    if isinstance(err, OSError):
        return grpc.StatusCode.UNAVAILABLE, f"dependency unavailable: {type(err).__name__}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}"


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], err: BaseException) -> NoReturn:
    code, message = status_for(err)
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises
