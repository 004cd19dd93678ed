"""python -m frugal.billing [serve|migrate|consume|tenants|usage|budget|dlq] (see frugal.billing.cli)."""

from __future__ import annotations

from frugal.billing.cli import main as cli_main


def main() -> None:
    raise SystemExit(cli_main())


if __name__ == "__main__":
    main()
