"""The producer's disk spool: cost events that could not reach Redis, durable until they do.

One append-only file of JSON lines per producer, locked with flock(2) while its producer lives. Appends are
group-committed: every event queued while a write is in progress goes out in the next write, followed by
one fsync, and no emit returns before its line is on disk. A producer that dies leaves its file unlocked;
the next producer with the same name and Redis target (a restart) adopts it and replays it in order.

A crash between "replayed to Redis" and "truncated" replays those lines again at the next start: the same
event, same id, same payload, which billing deduplicates. A torn last line (crash during the write, before
the fsync returned, so no caller was told it was recorded) is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_spool_dir() -> Path:
    """COST_SPOOL_DIR, else "{tmpdir}/frugal-cost-spool"."""
    return Path(os.environ.get("COST_SPOOL_DIR") or Path(tempfile.gettempdir()) / "frugal-cost-spool")


def spool_prefix(name: str, target: str) -> str:
    """Files of one producer name writing to one Redis target (url + stream) share this prefix."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return f"{_NAME_RE.sub('_', name)[:64]}-{digest}"


@dataclass
class SpoolFile:
    """One locked spool file. Not thread-safe: the producer serialises access with its own lock."""

    path: Path
    handle: IO[bytes]
    size: int = 0
    lines: int = 0
    # Bytes at the start of the file already replayed to Redis (the file is truncated once all are).
    replayed: int = 0
    replayed_lines: int = 0

    @classmethod
    def try_lock(cls, path: Path) -> SpoolFile | None:
        handle = open(path, "a+b")  # noqa: SIM115 - kept open (and locked) for the producer's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        handle.seek(0, os.SEEK_END)
        spool = cls(path, handle, size=handle.tell())
        spool.lines = sum(1 for _ in spool.read_lines(0))
        return spool

    def append(self, lines: list[bytes]) -> None:
        """Appends and fsyncs (blocking: run it in a thread)."""
        data = b"".join(line.rstrip(b"\n") + b"\n" for line in lines)
        self.handle.seek(0, os.SEEK_END)
        self.handle.write(data)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.size += len(data)
        self.lines += len(lines)

    def read_lines(self, offset: int, max_lines: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(offset after the line, line) from `offset`; a torn last line (no newline) is not returned."""
        self.handle.flush()
        with open(self.path, "rb") as f:
            f.seek(offset)
            n = 0
            while max_lines is None or n < max_lines:
                line = f.readline()
                if not line:
                    return
                if not line.endswith(b"\n"):
                    log.error("spool %s: torn last line (%d bytes) skipped", self.path, len(line))
                    return
                offset += len(line)
                n += 1
                if line.strip():
                    yield offset, line.rstrip(b"\n")

    @property
    def backlog_bytes(self) -> int:
        return self.size - self.replayed

    @property
    def backlog_lines(self) -> int:
        return self.lines - self.replayed_lines

    def truncate(self) -> None:
        self.handle.truncate(0)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.size = self.lines = self.replayed = self.replayed_lines = 0

    def close(self, *, remove: bool = False) -> None:
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


def open_own_spool(directory: Path, prefix: str) -> SpoolFile:
    """The first unlocked `{prefix}-{n}.spool` (an existing one is a dead producer's: kept and replayed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(1024):
        spool = SpoolFile.try_lock(directory / f"{prefix}-{n}.spool")
        if spool is not None:
            return spool
    raise OSError(f"no free spool file {prefix}-N.spool in {directory} (1024 live producers?)")


def orphan_spools(directory: Path, prefix: str, own: Path) -> Iterator[SpoolFile]:
    """Locks and yields the non-empty spools of dead producers of this name and target (not `own`)."""
    for path in sorted(directory.glob(f"{prefix}-*.spool")):
        if path == own:
            continue
        spool = SpoolFile.try_lock(path)
        if spool is None:
            continue  # a live producer's
        if spool.size == 0:
            spool.close(remove=True)
            continue
        yield spool

