"""python -m frugal.billing"""

from __future__ import annotations

from frugal.billing.config import Settings
from frugal.billing.server import build_app
from frugal.common.service import run_service


def main() -> None:
    run_service(Settings, build_app)


if __name__ == "__main__":
    main()
