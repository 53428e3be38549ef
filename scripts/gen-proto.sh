#!/usr/bin/env bash
# The ONE generator of code from proto/. Python (grpcio-tools) goes to
# worker-py/asr/v1/, TypeScript (ts-proto, grpc-js services) to gateway/src/gen/.
# With --check it generates into a temporary tree and fails if the committed
# generated code differs, so CI catches a proto edited without regenerating.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-worker-py/.venv/bin/python}"
plugin="node_modules/.bin/protoc-gen-ts_proto"
[ -x "$py" ] || { echo "gen-proto: $py not found; run scripts/setup.sh first" >&2; exit 1; }
[ -x "$plugin" ] || { echo "gen-proto: $plugin not found; run npm ci first" >&2; exit 1; }

check=0
[ "${1:-}" = "--check" ] && check=1
out="$root"
if [ $check = 1 ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
py_out="$out/worker-py"
ts_out="$out/gateway/src/gen"
rm -rf "$py_out/asr" "$ts_out"
mkdir -p "$py_out" "$ts_out"

"$py" -m grpc_tools.protoc -I proto \
  --python_out="$py_out" --grpc_python_out="$py_out" --pyi_out="$py_out" \
  proto/asr/v1/asr.proto
# Make the generated tree importable as packages.
touch "$py_out/asr/__init__.py" "$py_out/asr/v1/__init__.py"

"$py" -m grpc_tools.protoc -I proto \
  --plugin=protoc-gen-ts_proto="$plugin" \
  --ts_proto_out="$ts_out" \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,importSuffix=.js,useOptionals=messages,oneof=unions-value,useDate=false,forceLong=number \
  proto/asr/v1/asr.proto proto/grpc/health/v1/health.proto

# The error catalog of both languages, from proto/asr/v1/errors.toml (checked against the enum above).
"$py" scripts/gen_error_catalog.py "$py_out" "$ts_out"

if [ $check = 1 ]; then
  if ! diff -r "$py_out/asr" "$root/worker-py/asr" >/dev/null || ! diff -r "$ts_out" "$root/gateway/src/gen" >/dev/null; then
    diff -r "$py_out/asr" "$root/worker-py/asr" || true
    diff -r "$ts_out" "$root/gateway/src/gen" || true
    echo "gen-proto: generated code is out of date; run 'npm run gen:proto' and commit the result" >&2
    exit 1
  fi
  echo "gen-proto: generated code matches proto/"
fi
