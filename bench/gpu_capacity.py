#!/usr/bin/env python3
"""GPU capacity: how many continuous real-time streams one GPU holds within the targets.

1. Builds (once, offline) a random-weight Fun-ASR-Nano directory with the REAL shapes via
   the worker's own builder (`asr_worker.models.build_tiny_model(dir, real_shapes=True)`:
   SenseVoice-small encoder 50+20 layers, width 512; adaptor; Qwen3-0.6B, 28 layers,
   width 1024, 16/8 heads, vocab 151936), or the tiny one with --tiny.
2. Starts the production worker (`asr_worker serve --engine funasr-nano`) through
   bench/capacity_worker.py, which only forces decode lengths to what real speech yields
   (--tokens-per-second, default 5: every request generates exactly ceil(seconds x 5)
   tokens, EOS suppressed) — random weights would otherwise stop at random. That is the
   shipped process model (supervisor + engine process + default front processes); worker
   CPU and RSS are summed over the whole process tree, and each client process opens one
   connection per front (asrbench.connections_per_front), as a gateway does.
3. Ramps N concurrent streams (real-time paced 60 ms chunks of the shared recordings,
   concatenated per stream in a rotated order, so speech with natural pauses; staggered
   starts) for --duration-s each and checks the DESIGN targets:
     final after VAD end p95 <= 600 ms, final after is_speaking=false p95 <= 1000 ms,
     partial cadence p95 <= 600 ms, first partial p95 <= 700 ms, no errors.
   Capacity = the largest N that passes (with --search, bisected between the last pass
   and the first failure).

    # on a GPU machine (builds ~/.cache/asr-bench/fun-asr-nano-real-shapes once, ~4 GB):
    worker-py/.venv/bin/python bench/gpu_capacity.py --streams 50,100,200,300,400,500,600,800 --search
    # CPU smoke (CI): tiny model, 2 streams, a few seconds
    worker-py/.venv/bin/python bench/gpu_capacity.py --tiny --cpu --streams 1,2 --duration-s 6
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asrbench as ab

TARGETS = {
    "final_after_vad_end_ms": 600.0,
    "final_after_stop_ms": 1000.0,
    "cadence_ms": 600.0,
    "first_partial_ms": 700.0,
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random-weight model (CPU smoke / CI)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is present")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--streams", default="50,100,200,300,400,500,600,800")
    p.add_argument("--search", action="store_true", help="bisect between the last pass and first fail")
    p.add_argument("--duration-s", type=float, default=40.0, help="audio per stream per step")
    p.add_argument("--ramp-s", type=float, default=None, help="start spread (default duration/4, max 10)")
    p.add_argument("--tokens-per-second", type=float, default=5.0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-window-ms", type=float, default=10.0)
    p.add_argument(
        "--partial-interval-ms",
        type=int,
        default=480,
        help="cadence the streams request (FunASR chunk_size[1]*60; worker clamps 480..1200)",
    )
    p.add_argument("--dtype", default="auto")
    p.add_argument("--client-procs", type=int, default=0, help="load generator processes (default: N/150)")
    p.add_argument("--files", default=",".join(ab.DEFAULT_FILES))
    p.add_argument("--worker-arg", action="append", default=[])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--max-total-s", type=float, default=3000.0, help="stop ramping after this long")
    return p.parse_args()


def device_for(a: argparse.Namespace) -> str:
    if a.cpu:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    if not a.tiny:
        raise SystemExit(
            "gpu_capacity: no CUDA GPU; the real-shape model needs one (use --tiny --cpu for a smoke run)"
        )
    return "cpu"


def ensure_model(a: argparse.Namespace) -> Path:
    if a.model_dir is None:
        base = Path(tempfile.gettempdir()) if a.tiny else Path.home() / ".cache" / "asr-bench"
        a.model_dir = base / ("asr-bench-tiny-model" if a.tiny else "fun-asr-nano-real-shapes")
    d = a.model_dir
    if (d / "model.pt").exists() and (d / "config.yaml").exists():
        return d
    print(
        f"[capacity] building {'tiny' if a.tiny else 'real-shape'} random-weight model in {d}",
        file=sys.stderr,
    )
    t = time.monotonic()
    from asr_worker.models import build_tiny_model

    build_tiny_model(d, real_shapes=not a.tiny)
    print(f"[capacity] model built in {time.monotonic() - t:.0f} s", file=sys.stderr)
    return d


def stream_audio(audios: list[ab.Audio], n: int, seconds: float) -> list[ab.Audio]:
    """One continuous recording per stream: the files concatenated in an order rotated by the
    stream index (so streams do not speak in lockstep), cut to `seconds`."""
    need = int(seconds * 32000) & ~1
    out = []
    for i in range(min(n, len(audios))):
        pcm = b""
        k = i
        while len(pcm) < need:
            pcm += audios[k % len(audios)].pcm
            k += 1
        out.append(ab.Audio(f"mix{i}", pcm[:need]))
    return out


def _client(args: tuple) -> list[ab.StreamTrace]:
    address, audios, n, offset, ramp_s, interval, timeout = args
    # Stagger this process's share inside the global ramp.
    traces, _ = asyncio.run(
        ab.run_streams(
            address, audios, n, speed=1.0, ramp_s=ramp_s, partial_interval_ms=interval, call_timeout=timeout
        )
    )
    for t in traces:
        t.idx += offset
    return traces


class GpuSampler:
    """nvidia-smi utilization / memory every second (absent on CPU)."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = (
                    subprocess.run(
                        [
                            "nvidia-smi",
                            "--query-gpu=utilization.gpu,memory.used",
                            "--format=csv,noheader,nounits",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=5,
                    )
                    .stdout.strip()
                    .splitlines()[0]
                )
                u, m = (float(x) for x in out.split(","))
                self.util.append(u)
                self.mem.append(m)
            except Exception:
                return

    def __enter__(self) -> GpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def run_step(w: ab.Worker, audios: list[ab.Audio], n: int, a: argparse.Namespace) -> dict:
    ramp = a.ramp_s if a.ramp_s is not None else min(10.0, a.duration_s / 4)
    procs = a.client_procs or max(1, min(os.cpu_count() or 1, (n + 149) // 150))
    procs = min(procs, n)
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    jobs, offset = [], 0
    for k in per:
        # Each process gets a strided share of the streams' audio so the mix stays the same.
        mine = [audios[(offset + i) % len(audios)] for i in range(min(k, len(audios)))]
        jobs.append((w.address, mine, k, offset, ramp, a.partial_interval_ms, a.duration_s + 120))
        offset += k
    # The worker is a process tree (supervisor, engine, fronts): count all of it.
    cpu0, t0 = ab.proc_tree_cpu_seconds(w.pid), time.monotonic()
    with GpuSampler() as gpu:
        if procs == 1:
            traces = _client(jobs[0])
        else:
            with mp.get_context("spawn").Pool(procs) as pool:
                traces = [t for part in pool.map(_client, jobs) for t in part]
    wall = time.monotonic() - t0
    m = ab.stream_metrics(traces)
    m.update(
        streams=n,
        wall_s=wall,
        client_procs=procs,
        worker_cores=(ab.proc_tree_cpu_seconds(w.pid) - cpu0) / wall,
        worker_rss_mib=ab.proc_tree_rss_mib(w.pid),
        gpu_util_mean=sum(gpu.util) / len(gpu.util) if gpu.util else None,
        gpu_mem_max_mib=max(gpu.mem) if gpu.mem else None,
    )
    fails = []
    for key, limit in TARGETS.items():
        v = m[key]["p95"]
        if v is None or v > limit:
            fails.append(f"{key} p95 {ab.f(v)} > {limit:.0f}")
    if m["errors"]:
        fails.append(f"{m['errors']} errors")
    m["pass"] = not fails
    m["fails"] = fails
    return m


def main() -> int:
    a = parse()
    dev = device_for(a)
    model = ensure_model(a)
    steps = sorted({int(x) for x in a.streams.split(",")})
    files = a.files.split(",")
    audios = stream_audio(ab.load_audio(files), max(steps), a.duration_s)
    launcher = [
        sys.executable,
        str(Path(__file__).resolve().parent / "capacity_worker.py"),
        "--tokens-per-second",
        str(a.tokens_per_second),
        "--",
    ]
    wargs = [
        "--engine",
        "funasr-nano",
        "--model-dir",
        str(model),
        "--device",
        dev,
        "--dtype",
        a.dtype,
        "--max-batch-size",
        str(a.max_batch_size),
        "--batch-window-ms",
        str(a.batch_window_ms),
        "--max-streams",
        str(max(steps) * 2 + 16),
        "--log-level",
        "warning",
        *[x for w in a.worker_arg for x in w.split()],
    ]
    log = Path(tempfile.gettempdir()) / "asr-bench-capacity-worker.log"
    print(f"[capacity] starting worker on {dev}: {' '.join(wargs)}", file=sys.stderr)
    t = time.monotonic()
    w = ab.spawn_worker(wargs, launcher=launcher, log_path=log, timeout=1800)
    print(f"[capacity] worker SERVING after {time.monotonic() - t:.0f} s", file=sys.stderr)
    rows: list[dict] = []
    started = time.monotonic()
    try:
        last_pass, first_fail = 0, None
        queue = list(steps)
        while queue:
            n = queue.pop(0)
            if time.monotonic() - started > a.max_total_s:
                print("[capacity] time budget spent; stopping", file=sys.stderr)
                break
            m = run_step(w, audios, n, a)
            rows.append(m)
            print(
                f"[capacity] N={n}: {'PASS' if m['pass'] else 'FAIL ' + '; '.join(m['fails'])}",
                file=sys.stderr,
            )
            if m["pass"]:
                last_pass = max(last_pass, n)
            else:
                first_fail = n if first_fail is None else min(first_fail, n)
                queue = [q for q in queue if q < n]
                if not a.search:
                    break
            if (
                a.search
                and first_fail is not None
                and not queue
                and first_fail - last_pass > max(8, last_pass // 10)
            ):
                queue = [(last_pass + first_fail) // 2]
            time.sleep(2.0)
    finally:
        w.stop()
    capacity = max([r["streams"] for r in rows if r["pass"]], default=0)
    print_table(rows, a, dev, capacity)
    if a.json:
        ab.dump(
            a.json,
            {
                "machine": ab.machine(),
                "device": dev,
                "args": vars(a),
                "capacity": capacity,
                "targets": TARGETS,
                "rows": rows,
            },
        )
    bad = [r for r in rows if r["errors"]]
    return 1 if bad else 0


def print_table(rows: list[dict], a: argparse.Namespace, dev: str, capacity: int) -> None:
    print(f"machine: {ab.machine()}")
    print(
        f"model: {'tiny' if a.tiny else 'real shapes'} random weights, device {dev}, dtype {a.dtype}, "
        f"forced {a.tokens_per_second} tokens/s, max_batch_size {a.max_batch_size}, "
        f"window {a.batch_window_ms} ms, partial interval {a.partial_interval_ms} ms, "
        f"{a.duration_s:.0f} s per step"
    )
    print()
    print(
        "| streams | first partial p50/p95 (ms) | cadence p50/p95 (ms) | final after VAD end p50/p95 (ms) "
        "| final after stop p95 (ms) | partials | finals | errors | worker cores | GPU util % "
        "| GPU mem MiB | pass |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["streams"]):
        print(
            f"| {r['streams']} | {ab.latency_cells(r)} | {r['partials']} | {r['finals']} "
            f"| {r['errors']} | {r['worker_cores']:.2f} | {ab.f(r['gpu_util_mean'])} "
            f"| {ab.f(r['gpu_mem_max_mib'])} "
            f"| {'yes' if r['pass'] else 'no: ' + '; '.join(r['fails'])} |"
        )
    print()
    print(f"capacity: {capacity} streams within targets" if capacity else "capacity: no step passed")


if __name__ == "__main__":
    raise SystemExit(main())
