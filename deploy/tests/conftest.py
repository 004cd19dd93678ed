"""Makes `deploy` (deploy/checks, deploy/simulate_build.py, deploy/tests/helpers.py) importable as a
namespace package."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)
