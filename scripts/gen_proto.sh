#!/usr/bin/env bash
# Regenerates the checked-in gRPC/protobuf code of the deployment protocol from its .proto file.
# Needs grpcio-tools (pip install -e ".[dev]"). Run after every change to the .proto and commit
# the generated files with it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=src/fedloom/transport/proto
"$PY" -m grpc_tools.protoc -I "$OUT" --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  "$OUT/fedloom_transport.proto"
# protoc writes a top-level import; make it package-relative so the module works inside fedloom.
sed -i 's/^import fedloom_transport_pb2 as fedloom__transport__pb2$/from fedloom.transport.proto import fedloom_transport_pb2 as fedloom__transport__pb2/' \
  "$OUT/fedloom_transport_pb2_grpc.py"
