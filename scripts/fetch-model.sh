#!/usr/bin/env bash
# Resolves the worker's model directory and prints it (one line on stdout);
# downloads it first when allowed. Used by start-worker.sh at every start, by
# the worker image at build time (--build-arg DOWNLOAD_MODEL_AT_BUILD=1), and
# by hand: `ASR_DOWNLOAD_MODEL=1 scripts/fetch-model.sh`.
#
# Order: MODEL_DIR when set; else a model this script downloaded before (remembered in
# MODEL_CACHE_DIR/.resolved-<hub>-<id>, so restarts need no network); else, with
# ASR_DOWNLOAD_MODEL=1, `python -m asr_worker download` of MODEL_ID from MODEL_HUB into
# MODEL_CACHE_DIR; else an error naming the options.
#
#   MODEL_DIR, MODEL_ID (FunAudioLLM/Fun-ASR-Nano-2512), MODEL_HUB (ms | hf),
#   MODEL_REVISION, MODEL_CACHE_DIR (./models), ASR_DOWNLOAD_MODEL (0 | 1)
#
# The hubs differ: ModelScope's model.pt has the CTC weights that give finals token timestamps,
# Hugging Face's has none (same transcripts; the worker warns once at load).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${VENV_DIR:-$root/worker-py/.venv}/bin/python"
export PYTHONPATH="$root/worker-py${PYTHONPATH:+:$PYTHONPATH}"

model_id="${MODEL_ID:-FunAudioLLM/Fun-ASR-Nano-2512}"
model_hub="${MODEL_HUB:-ms}"
cache_dir="${MODEL_CACHE_DIR:-$root/models}"
log() { echo "fetch-model: $*" >&2; }

if [ -n "${MODEL_DIR:-}" ]; then
  [ -d "$MODEL_DIR" ] || { log "MODEL_DIR=$MODEL_DIR is not a directory"; exit 1; }
  echo "$MODEL_DIR"
  exit 0
fi

marker="$cache_dir/.resolved-${model_hub}-${model_id//\//--}"
if [ -f "$marker" ] && [ -d "$(cat "$marker")" ]; then
  cat "$marker"
  exit 0
fi

if [ "${ASR_DOWNLOAD_MODEL:-0}" != 1 ]; then
  log "no model: set MODEL_DIR to a model directory, or ASR_DOWNLOAD_MODEL=1 to download $model_id"
  log "(no hub reachable? build a random-weight smoke-test model: $py -m asr_worker tiny-model DIR)"
  exit 1
fi

[ -x "$py" ] || { log "$py not found; run scripts/setup.sh first"; exit 1; }
log "downloading $model_id from hub '$model_hub' into $cache_dir (once; later starts reuse it)"
args=(download --model-id "$model_id" --hub "$model_hub" --cache-dir "$cache_dir")
[ -z "${MODEL_REVISION:-}" ] || args+=(--revision "$MODEL_REVISION")
# `download` validates the snapshot and prints its directory as the last stdout line;
# progress output goes to the log.
out="$("$py" -m asr_worker "${args[@]}")" || {
  case "$model_hub" in hf | huggingface) other=ms ;; *) other=hf ;; esac
  log "download failed (see above); MODEL_HUB=$other tries the other hub (hf: no token timestamps; ms: with them)"
  exit 1
}
dir="$(tail -n 1 <<<"$out")"
[ -n "$dir" ] && [ -d "$dir" ] || { log "download did not yield a model directory"; exit 1; }
echo "$dir" >"$marker"
log "model ready: $dir (self-test: $py -m asr_worker check --model-dir $dir --device cuda)"
echo "$dir"
