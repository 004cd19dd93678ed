"""The BLAS kernel the routing artifacts are built with, so a rebuild is bit for bit on another machine.

OpenBLAS picks its kernel from the CPU at load time, and kernels sum in different orders: the same training
run gave weights differing in the sixth significant digit between an AVX-512 machine (kernel SkylakeX) and
one where OpenBLAS chose Haswell. The committed artifacts were built with SkylakeX; the build pins it
(`OPENBLAS_CORETYPE`, read when NumPy loads) wherever the CPU can run it. Elsewhere (no AVX-512, or not
x86-64) a rebuild runs on the default kernel and is not expected to match bit for bit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

CORETYPE = "SkylakeX"
_ENV = "OPENBLAS_CORETYPE"


def can_pin() -> bool:
    try:
        return " avx512f " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


def pinned_env() -> dict[str, str] | None:
    """The environment a reproducible build runs in, or None where this CPU cannot run the pinned kernel."""
    return os.environ | {_ENV: CORETYPE} if can_pin() else None


def reexec_pinned(module: str, argv: Sequence[str]) -> None:
    """Restarts `python -m module argv` with the pinned kernel unless it already runs with it (NumPy has
    loaded OpenBLAS by now: the kernel cannot change in this process). Returns only when no restart is needed
    or possible; says so when the build cannot be reproducible here."""
    if os.environ.get(_ENV) == CORETYPE:
        return
    env = pinned_env()
    if env is None:
        print(f"note: this CPU cannot run OpenBLAS's {CORETYPE} kernel the artifacts were built with; a rebuild "
              "here is not expected to match them bit for bit", file=sys.stderr)
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
