#!/usr/bin/env python3
"""Worker batching on CPU: throughput and latency at 1/4/16/64 concurrent streams,
batching on (max_batch_size 16, window 10 ms) versus off (max_batch_size 1), for the
fake engine (cost base + per item, so batching can pay) and the tiny random-weight
Fun-ASR-Nano — the same engine both ways.

Everything goes over gRPC through the REAL worker (`python -m asr_worker serve`,
its VAD, sessions and its one scheduler); this script is only the client. For the
tiny model the worker is started through bench/capacity_worker.py, which only forces
decode lengths (--tokens-per-second, default 5, as real speech yields), because
random weights otherwise decode up to the length cap. Each
stream sends a shared recording in 60 ms chunks, paced at `--speed` x real time
(0 = as fast as flow control allows), then ends input.

Reported per configuration: served results per second (partials + finals that
reached the client), audio seconds per wall second, first partial after speech
start, partial cadence, final after the worker's VAD end event, final after end of
input, worker CPU (cores), errors.

    worker-py/.venv/bin/python bench/worker_batching.py                     # full table
    worker-py/.venv/bin/python bench/worker_batching.py --engines fake --streams 1,4 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asrbench as ab


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="fake,tiny", help="comma list of fake, tiny")
    p.add_argument("--streams", default="1,4,16,64")
    p.add_argument("--batching", default="on,off")
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = unpaced")
    p.add_argument("--files", default=",".join(ab.DEFAULT_FILES))
    p.add_argument("--ramp-s", type=float, default=2.0)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-window-ms", type=float, default=10.0)
    p.add_argument("--fake-base-ms", type=float, default=20.0)
    p.add_argument("--fake-per-item-ms", type=float, default=5.0)
    p.add_argument(
        "--tiny-model-dir",
        type=Path,
        default=None,
        help="tiny model dir (built with `python -m asr_worker tiny-model` if missing)",
    )
    p.add_argument(
        "--tokens-per-second",
        type=float,
        default=5.0,
        help="tiny engine: force decode lengths to this rate (real speech: 4-6; 0 = off, "
        "random weights then decode up to the engine's cap)",
    )
    p.add_argument("--worker-arg", action="append", default=[], help="extra serve argument(s)")
    p.add_argument("--pin-worker", default=None, help="taskset CPU list for the worker")
    p.add_argument("--timeout", type=float, default=300.0, help="per configuration bound (s)")
    p.add_argument("--quick", action="store_true", help="short files only (smoke runs)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def engine_args(engine: str, a: argparse.Namespace) -> list[str]:
    if engine == "fake":
        return [
            "--engine",
            "fake",
            "--fake-base-ms",
            str(a.fake_base_ms),
            "--fake-per-item-ms",
            str(a.fake_per_item_ms),
        ]
    if engine == "tiny":
        d = a.tiny_model_dir
        if not (d / "model.pt").exists():
            print(f"[batching] building tiny model in {d}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "asr_worker", "tiny-model", str(d)],
                check=True,
                cwd=ab.REPO_ROOT,
                env={**__import__("os").environ, "PYTHONPATH": str(ab.WORKER_PY)},
            )
        return ["--engine", "funasr-nano", "--model-dir", str(d), "--device", "cpu"]
    raise SystemExit(f"unknown engine {engine}")


async def one_config(address: str, pid: int, audios, n: int, a: argparse.Namespace) -> dict:
    cpu0 = ab.proc_cpu_seconds(pid)
    t0 = time.monotonic()
    traces, wall = await asyncio.wait_for(
        ab.run_streams(
            address, audios, n, speed=a.speed, ramp_s=a.ramp_s if n > 1 else 0.0, call_timeout=a.timeout
        ),
        a.timeout + 30,
    )
    cores = (ab.proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    m = ab.stream_metrics(traces)
    audio_s = sum(t.audio_s for t in traces)
    m.update(
        streams=n,
        wall_s=wall,
        audio_s=audio_s,
        x_realtime=audio_s / wall,
        results_per_s=(m["partials"] + m["finals"]) / wall,
        worker_cores=cores,
        worker_rss_mib=ab.proc_rss_mib(pid),
    )
    return m


def main() -> int:
    a = parse()
    files = a.files.split(",")
    if a.quick:
        files = ["zh/mid.wav", "zh/damo.wav"]
    audios = ab.load_audio(files)
    if a.tiny_model_dir is None:
        a.tiny_model_dir = Path(tempfile.gettempdir()) / "asr-bench-tiny-model"
    streams = [int(x) for x in a.streams.split(",")]
    rows = []
    for engine in a.engines.split(","):
        for mode in a.batching.split(","):
            mbs = a.max_batch_size if mode == "on" else 1
            args = [
                *engine_args(engine, a),
                "--max-batch-size",
                str(mbs),
                "--batch-window-ms",
                str(a.batch_window_ms if mode == "on" else 0),
                "--max-streams",
                str(max(streams) + 8),
                "--log-level",
                "warning",
                *[x for w in a.worker_arg for x in w.split()],
            ]
            print(f"[batching] {engine} batching {mode}: serve {' '.join(args)}", file=sys.stderr)
            log = Path(tempfile.gettempdir()) / f"asr-bench-worker-{engine}-{mode}.log"
            launcher = None
            if engine == "tiny" and a.tokens_per_second > 0:
                launcher = [
                    sys.executable,
                    str(Path(__file__).resolve().parent / "capacity_worker.py"),
                    "--tokens-per-second",
                    str(a.tokens_per_second),
                    "--",
                ]
            w = ab.spawn_worker(args, cpus=a.pin_worker, log_path=log, launcher=launcher)
            try:
                for n in streams:
                    m = asyncio.run(one_config(w.address, w.pid, audios, n, a))
                    m.update(engine=engine, batching=mode, max_batch_size=mbs)
                    rows.append(m)
                    print(
                        f"[batching] {engine} {mode} C={n}: {m['results_per_s']:.1f} results/s, "
                        f"final after VAD end p95 {ab.f(m['final_after_vad_end_ms']['p95'])} ms, "
                        f"errors {m['errors']}",
                        file=sys.stderr,
                    )
                    time.sleep(1.0)
            finally:
                w.stop()
    print_table(rows, a)
    if a.json:
        ab.dump(a.json, {"machine": ab.machine(), "args": vars(a), "rows": rows})
    return 1 if any(r["errors"] for r in rows) else 0


def print_table(rows: list[dict], a: argparse.Namespace) -> None:
    print(f"machine: {ab.machine()}")
    print(
        f"speed {a.speed or 'max'} x real time; batching on = max_batch_size {a.max_batch_size}, "
        f"window {a.batch_window_ms} ms; off = max_batch_size 1; fake cost {a.fake_base_ms} + "
        f"{a.fake_per_item_ms} ms/item; tiny Fun-ASR-Nano decode lengths forced to "
        f"{a.tokens_per_second or 'off'} tokens/s"
    )
    print()
    print(
        "| engine | batching | streams | results/s | audio x RT | first partial p50/p95 (ms) "
        "| cadence p50/p95 (ms) | final after VAD end p50/p95 (ms) | final after stop p95 (ms) "
        "| worker cores | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['batching']} | {r['streams']} | {r['results_per_s']:.1f} "
            f"| {r['x_realtime']:.1f} | {ab.latency_cells(r)} | {r['worker_cores']:.2f} | {r['errors']} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
