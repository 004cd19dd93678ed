"""JSON (or text) logs that carry the tenant, session and request ids of the RPC being served."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from frugal.common.tenancy import current_identity

_IDS = ("tenant_id", "session_id", "request_id")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", *_IDS}


class _IdentityFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ident = current_identity()
        record.tenant_id = ident.tenant_id if ident else None
        record.session_id = ident.session_id if ident else None
        record.request_id = ident.request_id if ident else None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _IDS:
            value = getattr(record, key, None)
            if value:
                out[key] = value
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("tenant_id", "session_id") if getattr(record, k, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Configures the root logger once per process; later calls replace the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    handler.addFilter(_IdentityFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty third-party loggers stay at WARNING unless we are debugging.
    for noisy in ("httpx", "httpcore", "asyncio", "grpc._cython"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "DEBUG" else "WARNING")
