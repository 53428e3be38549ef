#!/usr/bin/env bash
# Starts one ASR worker in the foreground (exec: the worker itself gets SIGTERM
# and drains). Used by the worker image's entrypoint and by scripts/run.sh.
#
#   scripts/start-worker.sh [extra `asr_worker serve` flags...]
#
# Environment (all optional):
#   ASR_WORKER_LISTEN   HOST:PORT to bind                   (default 0.0.0.0:50051)
#   ASR_ENGINE          funasr-nano | fake                  (default funasr-nano)
#   ASR_DEVICE          cuda | cuda:N | cpu | auto          (default auto: cuda:0 when torch sees a GPU)
#   MODEL_DIR           a local Fun-ASR-Nano model directory; when set, nothing is downloaded
#   MODEL_ID            hub id                              (default FunAudioLLM/Fun-ASR-Nano-2512)
#   MODEL_HUB           ms (ModelScope) | hf (Hugging Face) (default ms)
#   MODEL_REVISION      hub revision                        (default: latest)
#   MODEL_CACHE_DIR     where downloads go                  (default ./models; /models in the image)
#   ASR_DOWNLOAD_MODEL  1: download MODEL_ID into MODEL_CACHE_DIR when it is not there yet
#                       (first start of the image); 0: never touch the network (default 0)
#   ASR_WORKER_ARGS     extra `serve` flags (batching, VAD, limits; see docs/worker.md)
#   VENV_DIR            the worker venv                     (default worker-py/.venv)
#
# The model directory comes from scripts/fetch-model.sh (MODEL_DIR, or a model downloaded
# earlier, or a download now when ASR_DOWNLOAD_MODEL=1); restarts need no network.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="${VENV_DIR:-$root/worker-py/.venv}/bin/python"
[ -x "$py" ] || { echo "start-worker: $py not found; run scripts/setup.sh first" >&2; exit 1; }
export PYTHONPATH="$root/worker-py${PYTHONPATH:+:$PYTHONPATH}"

listen="${ASR_WORKER_LISTEN:-0.0.0.0:50051}"
engine="${ASR_ENGINE:-funasr-nano}"
device="${ASR_DEVICE:-auto}"

log() { echo "start-worker: $*" >&2; }

# `auto` goes to the worker as is: it resolves devices in one place (cuda:0 when torch sees a
# GPU, else cpu) and logs the device it loaded the model on.
args=(serve --listen "$listen" --engine "$engine" --device "$device")

if [ "$engine" != fake ]; then
  model_dir="$(bash "$root/scripts/fetch-model.sh")" || exit 1
  args+=(--model-dir "$model_dir")
  log "model $model_dir"
fi

# shellcheck disable=SC2206  # ASR_WORKER_ARGS is a flag list, split on spaces on purpose
extra=(${ASR_WORKER_ARGS:-})
log "exec asr_worker ${args[*]} ${extra[*]} $*"
exec "$py" -m asr_worker "${args[@]}" "${extra[@]}" "$@"
