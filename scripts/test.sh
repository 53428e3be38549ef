#!/usr/bin/env bash
# THE test command (README, .ci/run): sets everything up from scratch if needed,
# then runs every check and test suite of the repository:
#
#   setup        scripts/setup.sh (npm ci, worker venv with pinned requirements)
#   proto-drift  generated code matches proto/ (scripts/gen-proto.sh --check)
#   buf-lint     buf lint on proto/ (buf.yaml)
#   typecheck    tsc --noEmit, strict (npm run typecheck)
#   ruff         ruff check on the Python code (generated worker-py/asr excluded)
#   pytest       worker tests (tests/worker)
#   node-tests   gateway, client and end-to-end tests (npm run test:ts)
#   chaos        tests/chaos: worker hang/crash under load and a short soak (real processes)
#   deploy       tests/deploy: compose file, k8s manifests, Dockerfiles, scripts
#   bench-smoke  tests/bench: the benchmark scripts at tiny scale (GPU capacity on CPU)
#
#   scripts/test.sh                  all stages
#   scripts/test.sh pytest deploy    only these stages (setup always runs)
#
# Every stage runs even when an earlier one failed; each test runner prints its
# own summary. The last line counts test cases (pytest, node) plus one per
# check stage, e.g. "total: 212 passed, 0 failed, 3 skipped"; the exit status
# is non-zero when any stage failed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1

all_stages=(setup proto-drift buf-lint typecheck ruff pytest node-tests chaos deploy bench-smoke)
selected=("$@")
want() {
  [ ${#selected[@]} = 0 ] && return 0
  [ "$1" = setup ] && return 0
  local s
  for s in "${selected[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}
for s in "${selected[@]}"; do
  case " ${all_stages[*]} " in *" $s "*) ;; *) echo "test: unknown stage '$s' (stages: ${all_stages[*]})" >&2; exit 2 ;; esac
done

py="$root/worker-py/.venv/bin/python"
log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

total_pass=0 total_fail=0 total_skip=0
summary=()

# count_tests LOGFILE KIND -> sets t_pass t_fail t_skip from a runner's closing lines
count_tests() {
  t_pass=0 t_fail=0 t_skip=0
  local f="$1" kind="$2" line
  case "$kind" in
    pytest)
      line="$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$f" | tail -n 1)"
      t_pass=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || true)
      t_fail=$(( $(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0) \
               + $(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || echo 0) ))
      t_skip=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || true)
      ;;
    node)
      # node's spec reporter ends with "ℹ pass N", "ℹ fail N", "ℹ skipped N", "ℹ todo N"
      t_pass=$(grep -aE '^[^a-z0-9]*pass [0-9]+$' "$f" | tail -n 1 | grep -oE '[0-9]+$' || true)
      t_fail=$(grep -aE '^[^a-z0-9]*fail [0-9]+$' "$f" | tail -n 1 | grep -oE '[0-9]+$' || true)
      local n
      for n in $(grep -aE '^[^a-z0-9]*(skipped|todo) [0-9]+$' "$f" | tail -n 2 | grep -oE '[0-9]+$'); do
        t_skip=$((t_skip + n))
      done
      ;;
  esac
  t_pass=${t_pass:-0} t_fail=${t_fail:-0} t_skip=${t_skip:-0}
}

# stage NAME KIND(check|pytest|node) LIMIT_S CMD...
stage() {
  local name="$1" kind="$2" limit="$3"
  shift 3
  want "$name" || return 0
  local logf="$log_dir/$name.log" t0=$SECONDS rc
  echo
  echo "==================== $name: $* ===================="
  timeout --kill-after=30 "$limit" "$@" 2>&1 | tee "$logf"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "test: stage $name timed out after ${limit}s"
  local dt=$((SECONDS - t0)) detail
  if [ "$kind" = check ]; then
    if [ "$rc" = 0 ]; then total_pass=$((total_pass + 1)); else total_fail=$((total_fail + 1)); fi
    detail="check"
  else
    count_tests "$logf" "$kind"
    # A runner that failed without reporting a failed test (crash, collection error,
    # exit 5 "no tests ran", timeout) still counts as one failure.
    if [ "$rc" != 0 ] && [ "$t_fail" = 0 ]; then t_fail=1; fi
    if [ "$rc" = 0 ] && [ "$t_pass" = 0 ]; then rc=5; t_fail=1; echo "test: $name ran no test"; fi
    total_pass=$((total_pass + t_pass)) total_fail=$((total_fail + t_fail)) total_skip=$((total_skip + t_skip))
    detail="$t_pass passed, $t_fail failed, $t_skip skipped"
  fi
  if [ "$rc" = 0 ]; then
    summary+=("$(printf '  PASS  %-12s %5ss  %s' "$name" "$dt" "$detail")")
  else
    summary+=("$(printf '  FAIL  %-12s %5ss  %s (exit %s)' "$name" "$dt" "$detail" "$rc")")
  fi
  return 0
}

t_start=$SECONDS
echo "test: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(uname -m), node $(node --version 2>/dev/null || echo none)," \
  "$(python3 --version 2>&1), $(nproc) cores, CI=${CI:-false}, shared audio: ${ASR_SHARED_AUDIO:-../shared/audio}"
stage setup check 2400 bash scripts/setup.sh
stage proto-drift check 300 bash scripts/gen-proto.sh --check
stage buf-lint check 120 node_modules/.bin/buf lint
stage typecheck check 600 npm run --silent typecheck
stage ruff check 120 worker-py/.venv/bin/ruff check worker-py tests/worker tests/deploy bench tests/bench \
  --extend-exclude worker-py/asr --extend-exclude worker-py/.venv
stage pytest pytest 2400 "$py" -m pytest tests/worker -ra -p no:cacheprovider
stage node-tests node 1800 npm run --silent test:ts
stage chaos node 900 node --import tsx --test --test-reporter=spec --test-concurrency=1 tests/chaos/worker-faults.test.ts tests/chaos/soak.test.ts
stage deploy pytest 900 "$py" -m pytest tests/deploy -ra -p no:cacheprovider
stage bench-smoke pytest 900 "$py" -m pytest tests/bench -ra -p no:cacheprovider

echo
echo "==================== summary ($((SECONDS - t_start)) s) ===================="
printf '%s\n' "${summary[@]}"
echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" = 0 ]
