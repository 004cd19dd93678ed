# Frugal Mesh — run `make help`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
BUF := npx --yes @bufbuild/buf@1.75.0
export UV_FROZEN := 1

.PHONY: help setup proto proto-check lint test coverage-gateway demo dev devstack-stop up down bench bench-quick deploy-check

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(UV):
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --user uv

.venv/.synced: $(UV) pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen
	@touch $@

setup: .venv/.synced ## Install everything (uv sync; first run only)

proto: .venv/.synced ## Regenerate Python code from protos/
	./scripts/gen-protos.sh

proto-check: proto ## Fail if committed generated code is stale
	@git diff --exit-code --stat -- libs/common/src/frugal/api || { echo "generated code is stale: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- libs/common/src/frugal/api)" || { git status --porcelain -- libs/common/src/frugal/api; echo "generated code is stale: run 'make proto' and commit" >&2; exit 1; }

lint: .venv/.synced ## ruff, mypy (strict), buf lint
	$(UV) run ruff check .
	$(UV) run mypy libs/common/src libs/devkit/src libs/encoder/src services/*/src
	@# one mypy run per test/bench dir: several hold a conftest.py, which a single run sees as one module twice
	@for d in libs/common/tests services/*/tests bench/* deploy scripts tests/e2e tests/bench; do $(UV) run mypy $$d || exit 1; done
	$(BUF) lint

test: .venv/.synced ## Run the whole test suite (real Postgres+pgvector and Redis, no Docker needed)
	@$(UV) run pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

coverage-gateway: .venv/.synced ## Line coverage of services/media-gateway (its tests; target >= 85%)
	$(UV) run pytest -q -p no:cacheprovider --cov=services/media-gateway/src --cov-report=term-missing:skip-covered \
		--cov-fail-under=85 services/media-gateway/tests

demo: .venv/.synced ## Run the whole mesh on the embedded stack and replay the demo session (no keys)
	$(UV) run python scripts/demo.py

dev: .venv/.synced ## Embedded Postgres+Redis and all five services; Ctrl-C stops everything
	$(UV) run python -m frugal.devkit.localmesh

devstack-stop: .venv/.synced ## Stop the embedded Postgres and Redis
	$(UV) run python -m frugal.devkit.devstack stop

up: ## docker compose: LiveKit (dev), Postgres+pgvector, Redis (2 roles), the five services, demo tenant + KB
	@docker info >/dev/null 2>&1 || { echo "no Docker engine reachable: 'make up' needs Docker. Use 'make dev' (no Docker) instead." >&2; exit 1; }
	docker compose up -d --build --wait
	@docker compose logs --no-log-prefix bootstrap | tail -n 12

down: ## Stop the docker compose mesh
	@docker info >/dev/null 2>&1 || { echo "no Docker engine reachable: nothing to stop." >&2; exit 1; }
	docker compose down

deploy-check: .venv/.synced ## Validate Dockerfiles, compose, kustomize, Istio and monitoring offline (also part of make test)
	$(UV) run python -m deploy.checks

bench: .venv/.synced ## Run every benchmark under bench/ and print the figures
	@set -e; for b in $$(ls bench/*/run.py 2>/dev/null); do echo "=== $$b"; $(UV) run python $$b; done

bench-quick: .venv/.synced ## Every benchmark in --quick mode (smoke run, < 1 min each)
	@set -e; for b in $$(ls bench/*/run.py 2>/dev/null); do echo "=== $$b --quick"; $(UV) run python $$b --quick; done
