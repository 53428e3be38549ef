#!/usr/bin/env bash
# Readiness check of a gateway: exit 0 when GET /readyz answers 200 (at least
# one worker SERVING and not draining), 1 otherwise. Uses node's fetch, so the
# slim gateway image needs no curl. Used by the gateway image's HEALTHCHECK and
# docker-compose; the load balancer checks /readyz itself.
#
#   scripts/healthcheck-gateway.sh [URL]
#
# Default URL: http(s)://127.0.0.1:$GATEWAY_PORT/readyz (https when TLS_CERT is set;
# the certificate is not verified for this local check). ASR_HEALTH_TIMEOUT seconds (3).
set -euo pipefail
scheme=http
[ -z "${TLS_CERT:-}" ] || scheme=https
url="${1:-$scheme://127.0.0.1:${GATEWAY_PORT:-10095}/readyz}"
[ "$scheme" = http ] || export NODE_TLS_REJECT_UNAUTHORIZED=0
# shellcheck disable=SC2016  # JavaScript, not shell, inside the quotes
exec node -e '
const [url, timeoutS] = process.argv.slice(1);
fetch(url, { signal: AbortSignal.timeout(Number(timeoutS) * 1000) }).then(
  (r) => { if (!r.ok) console.error(`healthcheck: ${url}: HTTP ${r.status}`); process.exit(r.ok ? 0 : 1); },
  (e) => { console.error(`healthcheck: ${url}: ${e.cause?.code ?? e.cause?.message ?? e.message}`); process.exit(1); },
);' "$url" "${ASR_HEALTH_TIMEOUT:-3}"
