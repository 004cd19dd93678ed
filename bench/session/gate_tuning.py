"""The STT gate's settings, chosen held-out (see frugal.devkit.sessions.gate_tuning).

    uv run python bench/session/gate_tuning.py            # tune on the tuning seeds, evaluate on the others
    uv run python bench/session/gate_tuning.py --quick    # fewer seeds
"""

from __future__ import annotations

import sys
from pathlib import Path

from frugal.devkit.sessions.gate_tuning import main

if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent / ".media", sys.argv[1:]))
