"""python -m frugal.rag"""

from __future__ import annotations

from frugal.common.service import run_service
from frugal.rag.config import Settings
from frugal.rag.server import build_app


def main() -> None:
    run_service(Settings, build_app)


if __name__ == "__main__":
    main()
