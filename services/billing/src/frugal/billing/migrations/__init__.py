"""SQL migrations of the billing service (applied by frugal.common.migrations)."""
