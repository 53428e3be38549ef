#!/usr/bin/env bash
# The full benchmark suite as published in docs/benchmarks.md; outputs go to bench-results/.
#   bash bench/run-all.sh            # everything that runs without a GPU (~15 min on 2 cores)
#   GPU=1 bash bench/run-all.sh      # plus the GPU capacity ramp (needs CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
py=worker-py/.venv/bin/python
out=bench-results
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)

echo "== gateway overhead, stub worker (isolates the gateway), gateway alone on CPU 0"
node --import tsx bench/gateway-overhead.ts --worker stub --ns "${NS:-100,300,500,1000}" \
  --pin "${PIN:-gateway=0,worker=1,load=1}" \
  --out "$out/gateway-overhead-stub-$stamp.json" | tee "$out/gateway-overhead-stub-$stamp.md"

echo "== where the gateway's CPU goes (perf of the pinned 500-stream run)"
if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1; then
  python3 bench/gateway_perf.py --seconds 10 -- --worker stub --ns 500 --pin "${PIN:-gateway=0,worker=1,load=1}" \
    --worker-node-arg=--import=./bench/lib/h2-window.ts | tee "$out/gateway-perf-$stamp.md"
else
  echo "skipped: perf missing or not permitted (linux-perf; root or kernel.perf_event_paranoid <= 1)"
fi

echo "== gateway overhead, real worker with the fake engine"
node --import tsx bench/gateway-overhead.ts --worker python --ns "${NS_PY:-50,100}" \
  --out "$out/gateway-overhead-python-$stamp.json" | tee "$out/gateway-overhead-python-$stamp.md"

echo "== worker batching on CPU"
$py bench/worker_batching.py --json "$out/worker-batching-$stamp.json" | tee "$out/worker-batching-$stamp.md"

echo "== VAD cost per backend and batch size"
$py bench/vad_cost.py --out "$out/vad-cost-$stamp.json" | tee "$out/vad-cost-$stamp.md"

echo "== GPU capacity"
if [ "${GPU:-0}" = 1 ]; then
  $py bench/gpu_capacity.py --search --json "$out/gpu-capacity-$stamp.json" | tee "$out/gpu-capacity-$stamp.md"
else
  $py bench/gpu_capacity.py --tiny --cpu --streams 1,2,4 --duration-s 12 \
    --files synth/three_utterances.wav --json "$out/gpu-capacity-cpu-smoke-$stamp.json" \
    | tee "$out/gpu-capacity-cpu-smoke-$stamp.md"
fi
