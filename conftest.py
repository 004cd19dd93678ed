"""Root conftest: real Postgres/Redis fixtures for every test package (see frugal.common.testing)."""

pytest_plugins = ["frugal.common.testing"]
