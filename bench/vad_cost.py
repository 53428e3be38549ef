#!/usr/bin/env python3
"""VAD cost: CPU microseconds per stream-second for each VAD backend at several batch sizes.

Backends (the worker's own classes, `asr_worker.vad`, loaded as `serve --vad` loads them):

- ``silero-torch``: silero-vad v6 TorchScript on torch;
- ``silero-onnx``: the same network's ONNX file on onnxruntime (one intra-op thread);
- ``silero``: the default, both loaded, onnxruntime for steps of fewer than 12 streams
  and torch from 12 up (asr_worker.vad.SILERO_TORCH_FROM);
- ``fsmn``: FunASR's fsmn-vad (online fbank frontend + FSMN encoder). Without
  ``--fsmn-dir`` a random-weight directory with the released model's shapes is built
  (asr_worker.vad_tiny): the cost depends on the shapes, not on the weights.

B streams each get a different stretch of the shared real-speech recordings and send it
in 60 ms chunks, as the gateway does. Each tick slices every stream's chunk into windows
(`take_windows`) and scores all of them with ONE `score()` call, which is what the
worker's VAD batcher does when B streams are queued together; so B is the batch size
and the figure includes the windowing and the per-stream state handling, not just the
network. Single-threaded (torch.set_num_threads(1), onnxruntime intra_op_num_threads=1)
because fronts are one process per core. CPU time is this process's (time.process_time),
the median of `--repeats` runs.

`--paced S,...` adds a cross-check closer to a front: S streams paced in real time on
one asyncio loop, each awaiting the worker's `VadBatcher` per 60 ms chunk, batches scored
on one VAD thread. It reports the batch sizes that form by themselves and the process's
CPU per stream-second, which includes the asyncio pacing of the streams (an upper bound
for the VAD).

    worker-py/.venv/bin/python bench/vad_cost.py                       # full table
    worker-py/.venv/bin/python bench/vad_cost.py --backends silero-onnx --batch-sizes 1,16 --stream-seconds 5
    worker-py/.venv/bin/python bench/vad_cost.py --backends silero,silero-torch,silero-onnx \
        --batch-sizes '' --paced 100,200                                 # through VadBatcher
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asrbench as ab

BACKENDS = ("silero-torch", "silero-onnx", "silero", "fsmn")
CHUNK = 16 * ab.FRAME_MS  # samples per 60 ms chunk


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma list of " + ", ".join(BACKENDS))
    p.add_argument("--batch-sizes", default="1,16,64,200", help="streams scored per call")
    p.add_argument("--stream-seconds", type=float, default=40.0,
                   help="audio scored per measurement, summed over streams (at least 10 ticks)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per cell; the median is reported")
    p.add_argument("--files", default=",".join(ab.DEFAULT_FILES), help="shared recordings to stream")
    p.add_argument("--fsmn-dir", type=Path, default=None,
                   help="fsmn-vad directory (default: random weights with the released shapes)")
    p.add_argument("--paced", default="", help="also run S real-time streams through VadBatcher")
    p.add_argument("--paced-seconds", type=float, default=8.0, help="length of each paced run")
    p.add_argument("--tick-ms", type=float, default=32.0,
                   help="--paced: the batcher's tick (serve --vad-batch-ms); 0 = no wait")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args()


def load_backend(name: str, fsmn_dir: Path | None) -> Any:
    """The VAD model as `serve --vad NAME` builds it."""
    from asr_worker.vad import FsmnVad, SileroVad

    if name == "silero":
        return SileroVad("auto", threads=1)
    if name == "silero-torch":
        return SileroVad("torch")
    if name == "silero-onnx":
        return SileroVad("onnx", threads=1)
    if name == "fsmn":
        if fsmn_dir is None:
            from asr_worker.vad_tiny import build_fsmn_vad_dir

            fsmn_dir = build_fsmn_vad_dir(Path(tempfile.mkdtemp()) / "fsmn-vad", real_shapes=True)
        return FsmnVad(fsmn_dir)
    raise SystemExit(f"unknown backend {name!r}; use {', '.join(BACKENDS)}")


def measure(vad: Any, audio: np.ndarray, batch: int, stream_seconds: float) -> dict[str, float]:
    """CPU and wall time of scoring `batch` streams tick by tick, per stream-second."""
    ticks = max(10, math.ceil(stream_seconds / (batch * ab.FRAME_MS / 1000)))
    streams = [vad.new_stream() for _ in range(batch)]
    # Spread the streams' start points over the audio so that a batch mixes speech and silence.
    offsets = [(i * 104_729) % (len(audio) - CHUNK * (ticks + 5)) for i in range(batch)]

    def tick(t: int) -> int:
        jobs = []
        for s, off in zip(streams, offsets, strict=True):
            w = s.take_windows(audio[off + t * CHUNK : off + (t + 1) * CHUNK])
            if len(w):
                jobs.append((s, w))
        vad.score(jobs)
        return sum(len(w) for _, w in jobs)

    for t in range(5):  # warm: first calls allocate and pick kernels
        tick(t)
    windows = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for t in range(5, 5 + ticks):
        windows += tick(t)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    audio_s = batch * ticks * ab.FRAME_MS / 1000
    return {
        "us_cpu_per_stream_s": cpu * 1e6 / audio_s,
        "us_wall_per_stream_s": wall * 1e6 / audio_s,
        "stream_seconds": audio_s,
        "windows": windows,
    }


async def paced(
    vad: Any, audio: np.ndarray, streams: int, seconds: float, tick_ms: float = 32.0
) -> dict[str, float]:
    """`streams` real-time streams through one VadBatcher, as a front runs them."""
    from asr_worker.vad import VadBatcher

    batcher = VadBatcher(vad, tick_s=tick_ms / 1000)
    batcher.start()
    period = ab.FRAME_MS / 1000
    t0 = time.perf_counter()

    async def one(i: int) -> int:
        s = vad.new_stream()
        off = (i * 104_729) % (len(audio) - CHUNK * math.ceil(seconds / period + 2))
        phase = period * i / streams  # spread the sends evenly over the 60 ms period
        k = 0
        while (k + 1) * period <= seconds:
            delay = t0 + phase + k * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await batcher.score(s, audio[off + k * CHUNK : off + (k + 1) * CHUNK])
            k += 1
        return k

    cpu0 = time.process_time()
    chunks = await asyncio.gather(*(one(i) for i in range(streams)))
    cpu = time.process_time() - cpu0
    await batcher.stop()
    sizes = list(batcher.batch_sizes)
    return {
        "us_cpu_per_stream_s": cpu * 1e6 / (sum(chunks) * period),
        "mean_batch": statistics.mean(sizes) if sizes else 0.0,
        "p50_batch": statistics.median(sizes) if sizes else 0.0,
        "cores": cpu / seconds,
    }


def main() -> int:
    args = parse()
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    paced_sizes = [int(b) for b in args.paced.split(",") if b.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    pcm = b"".join(a.pcm for a in ab.load_audio(args.files.split(",")))
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    results: dict[str, dict[int, dict[str, float]]] = {}
    paced_results: dict[str, dict[int, dict[str, float]]] = {}
    for name in backends:
        vad = load_backend(name, args.fsmn_dir)
        results[name] = {}
        paced_results[name] = {}
        for n in paced_sizes:
            cell = asyncio.run(paced(vad, audio, n, args.paced_seconds, args.tick_ms))
            paced_results[name][n] = cell
            print(f"{name:12s} paced {n:4d}  {cell['us_cpu_per_stream_s']:8.0f} µs CPU per stream-second, "
                  f"mean batch {cell['mean_batch']:.1f}", file=sys.stderr, flush=True)
        for b in sizes:
            runs = [measure(vad, audio, b, args.stream_seconds) for _ in range(args.repeats)]
            cell = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            cell["runs_us_cpu"] = [round(r["us_cpu_per_stream_s"]) for r in runs]
            results[name][b] = cell
            print(f"{name:12s} B={b:4d}  {cell['us_cpu_per_stream_s']:8.0f} µs CPU per stream-second "
                  f"(runs {cell['runs_us_cpu']})", file=sys.stderr, flush=True)
    if sizes:
        print("| backend | " + " | ".join(f"B={b}" for b in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for name in backends:
            cells = [f"{results[name][b]['us_cpu_per_stream_s']:,.0f}" for b in sizes]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if paced_sizes:
        heads = [f"{n} paced: µs/stream-s (mean batch)" for n in paced_sizes]
        print("\n| backend | " + " | ".join(heads) + " |")
        print("|---|" + "---:|" * len(paced_sizes))
        for name in backends:
            cells = [f"{c['us_cpu_per_stream_s']:,.0f} ({c['mean_batch']:.0f})"
                     for c in (paced_results[name][n] for n in paced_sizes)]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        ab.dump(args.out, {"machine": ab.machine(), "args": vars(args), "results": results,
                           "paced": paced_results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
