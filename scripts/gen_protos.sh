#!/usr/bin/env bash
# Regenerate neuronatlas/v1/*_pb2*.py(i) from protos/ with grpcio-tools.
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: the repository root)
# The output depends only on the .proto files and the grpcio-tools version.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT}"
PY="${PYTHON:-$(command -v python3)}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
mkdir -p "$OUT/neuronatlas/v1"
cd "$ROOT/protos"
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  neuronatlas/v1/neuronatlas.proto neuronatlas/v1/zoo.proto neuronatlas/v1/admin.proto
