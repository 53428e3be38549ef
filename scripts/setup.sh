#!/usr/bin/env bash
# Sets up everything the project needs from a fresh clone, and does nothing
# when that is already done. The same script serves developers, CI
# (scripts/test.sh), scripts/run.sh and both Dockerfiles.
#
#   scripts/setup.sh                 Node deps (npm ci) + worker venv with dev/test tools
#   scripts/setup.sh --python-only   only the worker venv (worker image)
#   scripts/setup.sh --node-only     only node_modules (gateway image, build stage)
#   scripts/setup.sh --no-dev        runtime dependencies only (no pytest/ruff/grpcio-tools,
#                                    no npm devDependencies)
#   scripts/setup.sh --force         reinstall even when the stamps match
#   scripts/setup.sh --check         install nothing; exit 1 when something is out of date
#
# Environment:
#   PYTHON           interpreter used to create the venv (default: python3; 3.11+)
#   VENV_DIR         the venv (default: worker-py/.venv)
#   TORCH_VERSION    torch pin (default: 2.13.0). On this kind of dev machine pip takes the
#                    CPU wheel that lies on disk (pip's find-links); on PyPI the same pin is
#                    the CUDA 13 build, which is what the worker image wants.
#   TORCH_INDEX_URL  optional index for torch alone, e.g. https://download.pytorch.org/whl/cpu
#                    or .../whl/cu128 (older NVIDIA drivers)
#   PIP_EXTRA_ARGS   extra arguments for every pip install (e.g. --no-cache-dir in images)
#   SETUP_VERBOSE=1  show pip's full output
#
# Idempotence: a stamp holding the hash of the inputs (requirement files, torch pin,
# interpreter version; package-lock.json and the npm mode) is written after a
# successful install, into the venv and into node_modules. A matching stamp
# skips the step, so repeated runs cost about a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

want_python=1 want_node=1 dev=1 force=0 check=0
for arg in "$@"; do
  case "$arg" in
    --python-only) want_node=0 ;;
    --node-only) want_python=0 ;;
    --no-dev) dev=0 ;;
    --force) force=1 ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "setup: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-worker-py/.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
read -r -a pip_extra <<<"${PIP_EXTRA_ARGS:-}"

log() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

hash_of() { # prints one sha256 over the given strings and files (missing files hash as "-")
  local item
  for item in "$@"; do
    if [ -f "$item" ]; then echo "$item"; cat "$item"; else echo "$item"; fi
  done | sha256sum | cut -d' ' -f1
}

setup_node() {
  command -v node >/dev/null || die "node not found: install Node.js 20.10 or newer"
  command -v npm >/dev/null || die "npm not found"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "Node.js $(node --version) is too old: 20.10 or newer is needed"
  [ -f package-lock.json ] || die "package-lock.json missing: the install must be reproducible (npm ci)"

  local mode=dev
  [ $dev = 1 ] || mode=prod
  local stamp_file=node_modules/.asr-setup-stamp
  local stamp
  stamp="$(hash_of package-lock.json "npm-mode=$mode" "node=$(node --version)")"
  if [ $force = 0 ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    log "node_modules up to date ($mode)"
    return
  fi
  if [ $check = 1 ]; then log "node_modules out of date ($mode)"; stale=1; return; fi
  log "npm ci ($mode) ..."
  local t0=$SECONDS
  if [ $dev = 1 ]; then
    npm ci --no-audit --no-fund
  else
    npm ci --omit=dev --no-audit --no-fund
  fi
  echo "$stamp" >"$stamp_file"
  log "node_modules ready in $((SECONDS - t0)) s"
}

# pip, with one harmless warning filtered out: machines whose pip config lists a local
# index directory that lacks a package print it once per package.
pip_install() {
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# Puts worker-py/ on the venv's import path (a .pth file, rewritten every run so a moved
# checkout still works): `worker-py/.venv/bin/python -m asr_worker ...` then works from any
# directory, as the docs show.
link_worker_source() {
  local site
  site="$("$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$root/worker-py" >"$site/asr-worker-src.pth"
}

setup_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11+ with venv (Debian/Ubuntu: apt-get install python3-venv)"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$("$PYTHON" --version 2>&1) is too old: Python 3.11 or newer is needed"

  local req=(worker-py/requirements.txt)
  [ $dev = 0 ] || req+=(worker-py/requirements-dev.txt tests/deploy/requirements.txt)
  local f
  for f in "${req[@]}"; do [ -f "$f" ] || die "$f missing"; done

  local vpy="$VENV_DIR/bin/python"
  local stamp_file="$VENV_DIR/.asr-setup-stamp"
  local stamp
  stamp="$(hash_of "${req[@]}" "torch=$TORCH_VERSION" "torch-index=$TORCH_INDEX_URL" \
    "python=$("$PYTHON" -c 'import sys; print(sys.version)')")"
  if [ $force = 0 ] && [ -x "$vpy" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
    && "$vpy" -c 'import sys' 2>/dev/null; then
    link_worker_source "$vpy"
    log "python venv $VENV_DIR up to date"
    return
  fi
  if [ $check = 1 ]; then log "python venv $VENV_DIR out of date"; stale=1; return; fi

  local t0=$SECONDS
  if ! "$vpy" -c 'import sys' 2>/dev/null; then
    log "creating venv $VENV_DIR with $("$PYTHON" --version 2>&1)"
    rm -rf "$VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR" || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  rm -f "$stamp_file"
  local quiet=(-q)
  [ "${SETUP_VERBOSE:-0}" = 0 ] || quiet=()
  local pip=(pip_install "$vpy" -m pip install "${quiet[@]}" --disable-pip-version-check --progress-bar off
    "${pip_extra[@]}")

  log "installing torch==$TORCH_VERSION${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} ..."
  if [ -n "$TORCH_INDEX_URL" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
  else
    "${pip[@]}" "torch==$TORCH_VERSION"
  fi

  # Pin torch while resolving the rest, so that no dependency swaps in another build.
  local constraints
  constraints="$(mktemp)"
  echo "torch==$TORCH_VERSION" >"$constraints"
  log "installing ${req[*]} ..."
  local req_args=()
  for f in "${req[@]}"; do req_args+=(-r "$f"); done
  if ! "${pip[@]}" -c "$constraints" "${req_args[@]}"; then
    rm -f "$constraints"
    die "pip install failed (see above)"
  fi
  rm -f "$constraints"

  # (funasr prints an ffmpeg notice on import; only failures matter here)
  "$vpy" -c 'import torch, grpc, funasr, silero_vad' >/dev/null 2>&1 \
    || "$vpy" -c 'import torch, grpc, funasr, silero_vad' \
    || die "the venv does not import torch/grpc/funasr/silero_vad after install"
  link_worker_source "$vpy"
  echo "$stamp" >"$stamp_file"
  log "python venv ready in $((SECONDS - t0)) s (torch $("$vpy" -c 'import torch; print(torch.__version__)'))"
}

stale=0
[ $want_node = 0 ] || setup_node
[ $want_python = 0 ] || setup_python
[ $stale = 0 ]
