#!/usr/bin/env bash
# Regenerates the committed Python code for protos/ into libs/common/src (messages, gRPC stubs, .pyi).
set -euo pipefail
cd "$(dirname "$0")/.."
out=libs/common/src
rm -rf "$out/frugal/api"
mkdir -p "$out"
mapfile -t files < <(find protos -name '*.proto' | sort)
uv run --frozen python -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "${files[@]}"
# Packages, so that type checkers and importlib.resources see them; `frugal` itself stays a namespace.
find "$out/frugal/api" -type d -exec touch {}/__init__.py \;
# Deterministic output regardless of file system order.
find "$out/frugal/api" -name '__pycache__' -prune -exec rm -rf {} +
