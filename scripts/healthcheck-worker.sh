#!/usr/bin/env bash
# gRPC health check of a worker (grpc.health.v1.Health/Check), the Python
# equivalent of grpc_health_probe. Exit 0 only when the service is SERVING;
# 1 when NOT_SERVING/UNKNOWN, 2 when unreachable or timed out.
# Used by the worker image's HEALTHCHECK, docker-compose and scripts/run.sh.
#
#   scripts/healthcheck-worker.sh [HOST:PORT] [SERVICE]
#
# Defaults: HOST:PORT from ASR_HEALTH_ADDRESS, else 127.0.0.1 and the port of
# ASR_WORKER_LISTEN (default 50051); SERVICE "" (the whole server).
# ASR_HEALTH_TIMEOUT (seconds, default 3). Quiet unless -v is given first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
verbose=0
if [ "${1:-}" = "-v" ]; then verbose=1; shift; fi

listen="${ASR_WORKER_LISTEN:-0.0.0.0:50051}"
addr="${1:-${ASR_HEALTH_ADDRESS:-127.0.0.1:${listen##*:}}}"
service="${2:-}"
py="${VENV_DIR:-$root/worker-py/.venv}/bin/python"
[ -x "$py" ] || { echo "healthcheck: $py not found; run scripts/setup.sh" >&2; exit 2; }

exec "$py" - "$addr" "$service" "${ASR_HEALTH_TIMEOUT:-3}" "$verbose" <<'PY'
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

addr, service, timeout, verbose = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
try:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
except grpc.RpcError as err:
    print(f"healthcheck: {addr}: {err.code().name}: {err.details()}", file=sys.stderr)
    sys.exit(2)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
if verbose or reply.status != health_pb2.HealthCheckResponse.SERVING:
    print(f"healthcheck: {addr} service={service!r}: {status}", file=sys.stderr)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PY
