#!/usr/bin/env bash
# The main job on one machine, without Docker: set everything up, then run one
# worker (background) and the gateway (foreground) on ws://0.0.0.0:10095/.
# Ctrl-C or SIGTERM stops both cleanly (the gateway first, then the worker drains).
#
#   ./scripts/run.sh
#
# Which model:
#   MODEL_DIR=/path/to/Fun-ASR-Nano-2512   a model directory you already have
#   ASR_DOWNLOAD_MODEL=1                   download MODEL_ID (default FunAudioLLM/Fun-ASR-Nano-2512)
#                                          from MODEL_HUB (ms | hf) into MODEL_CACHE_DIR (./models)
#   neither                                a model downloaded earlier into MODEL_CACHE_DIR, else a
#                                          TINY RANDOM-WEIGHT model built offline (smoke tests only:
#                                          its transcripts are gibberish)
# Other settings: GATEWAY_PORT (10095), WORKER_PORT (50051), ASR_DEVICE (auto|cpu|cuda),
# ASR_ENGINE (funasr-nano|fake), ASR_WORKER_ARGS, WORKER_READY_TIMEOUT (seconds, 900), and every
# gateway variable (docs/gateway.md). Worker output also goes to $RUN_LOG_DIR/worker.log
# (default ./logs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { echo "run: $*" >&2; }

bash "$root/scripts/setup.sh"

py="${VENV_DIR:-$root/worker-py/.venv}/bin/python"
export PYTHONPATH="$root/worker-py${PYTHONPATH:+:$PYTHONPATH}"
export MODEL_CACHE_DIR="${MODEL_CACHE_DIR:-$root/models}"
engine="${ASR_ENGINE:-funasr-nano}"

if [ "$engine" != fake ]; then
  if [ -n "${MODEL_DIR:-}" ] || [ "${ASR_DOWNLOAD_MODEL:-0}" = 1 ] \
    || ASR_DOWNLOAD_MODEL=0 bash "$root/scripts/fetch-model.sh" >/dev/null 2>&1; then
    # MODEL_DIR, a model downloaded earlier, or a download now (fails loudly, no fallback).
    MODEL_DIR="$(bash "$root/scripts/fetch-model.sh")" || exit 1
    export MODEL_DIR
    log "model: $MODEL_DIR"
  else
    tiny="$MODEL_CACHE_DIR/tiny-fun-asr-nano"
    cat >&2 <<EOF

run: ==========================================================================
run:  WARNING: no real model found. Using a TINY RANDOM-WEIGHT Fun-ASR-Nano
run:  model at $tiny
run:  It loads and runs through the production code path, but its
run:  transcripts are meaningless: it is for smoke tests only. For real use:
run:    ASR_DOWNLOAD_MODEL=1 ./scripts/run.sh         (ModelScope; MODEL_HUB=hf)
run:    MODEL_DIR=/path/to/Fun-ASR-Nano-2512 ./scripts/run.sh
run: ==========================================================================
EOF
    if [ ! -f "$tiny/model.pt" ]; then
      log "building the tiny model (offline, about a minute) ..."
      rm -rf "$tiny"
      mkdir -p "$MODEL_CACHE_DIR"
      "$py" -m asr_worker tiny-model "$tiny" >&2
    fi
    export MODEL_DIR="$tiny"
  fi
fi

gateway_port="${GATEWAY_PORT:-10095}"
worker_port="${WORKER_PORT:-50051}"
log_dir="${RUN_LOG_DIR:-$root/logs}"
mkdir -p "$log_dir"
worker_log="$log_dir/worker.log"
: >"$worker_log"

worker_pid="" gateway_pid=""
stopping=0
stop() {
  [ $stopping = 0 ] || return 0
  stopping=1
  log "stopping ..."
  # The gateway first (it drains its sessions), then the worker (it drains its streams).
  if [ -n "$gateway_pid" ] && kill -0 "$gateway_pid" 2>/dev/null; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  log "stopped"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop' EXIT

export ASR_WORKER_LISTEN="127.0.0.1:$worker_port"
log "starting the worker on $ASR_WORKER_LISTEN (log: $worker_log)"
# Own process group for the children is not needed: both are exec'd and get TERM from stop().
bash "$root/scripts/start-worker.sh" > >(tee -a "$worker_log") 2> >(tee -a "$worker_log" >&2) &
worker_pid=$!

timeout_s="${WORKER_READY_TIMEOUT:-900}"
t0=$SECONDS
until grep -q '^LISTENING ' "$worker_log" 2>/dev/null; do
  kill -0 "$worker_pid" 2>/dev/null || { log "the worker exited before listening (see above)"; exit 1; }
  [ $((SECONDS - t0)) -lt "$timeout_s" ] || { log "the worker did not listen within ${timeout_s}s"; exit 1; }
  sleep 0.5
done
log "worker listening; waiting until it reports SERVING (model loaded and warmed) ..."
until ASR_HEALTH_TIMEOUT=2 bash "$root/scripts/healthcheck-worker.sh" "127.0.0.1:$worker_port" 2>/dev/null; do
  kill -0 "$worker_pid" 2>/dev/null || { log "the worker exited while loading (see above)"; exit 1; }
  [ $((SECONDS - t0)) -lt "$timeout_s" ] || { log "the worker was not SERVING within ${timeout_s}s"; exit 1; }
  sleep 1
done
log "worker SERVING after $((SECONDS - t0)) s"

export GATEWAY_PORT="$gateway_port"
export WORKER_ADDRESSES="${WORKER_ADDRESSES:-127.0.0.1:$worker_port}"
log "starting the gateway on ws://0.0.0.0:$gateway_port/ (workers: $WORKER_ADDRESSES)"
log "try: npm run client -- --help   |   curl localhost:$gateway_port/readyz"
bash "$root/scripts/start-gateway.sh" &
gateway_pid=$!

# Run until either child exits (or a signal arrives); then stop the other.
set +e
wait -n "$gateway_pid" "$worker_pid"
rc=$?
set -e
if [ $stopping = 0 ]; then
  if ! kill -0 "$gateway_pid" 2>/dev/null; then log "the gateway exited (status $rc)"; else log "the worker exited (status $rc)"; fi
  stop
  exit "$rc"
fi
