#!/usr/bin/env bash
# Starts the FunASR-protocol WebSocket gateway in the foreground (exec: node
# itself gets SIGTERM and drains). Used by the gateway image and scripts/run.sh.
#
#   scripts/start-gateway.sh
#
# The gateway reads its configuration from the environment (GATEWAY_PORT,
# WORKER_ADDRESSES, limits, ...: see docs/gateway.md and the README's table).
# Which code runs:
#   GATEWAY_FROM_DIST=1   the compiled dist/gateway/src/main.js (`npm run build`); the image
#                         sets this, and its node_modules hold production dependencies only
#   otherwise             the TypeScript source through tsx when tsx is installed (dev), else dist
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v node >/dev/null || { echo "start-gateway: node not found (Node.js 20.10+)" >&2; exit 1; }
[ -d node_modules ] || { echo "start-gateway: node_modules missing; run scripts/setup.sh first" >&2; exit 1; }

dist_main="$root/dist/gateway/src/main.js"
if [ "${GATEWAY_FROM_DIST:-0}" != 1 ] && [ -e node_modules/tsx/package.json ]; then
  exec node --enable-source-maps --import tsx "$root/gateway/src/main.ts"
fi
[ -f "$dist_main" ] || { echo "start-gateway: $dist_main missing; run 'npm run build' first" >&2; exit 1; }
exec node --enable-source-maps "$dist_main"
