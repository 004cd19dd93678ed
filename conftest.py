"""Root conftest: real Postgres/Redis fixtures for every test package (see frugal.devkit.pytest_plugin)."""

pytest_plugins = ["frugal.devkit.pytest_plugin"]
