#!/usr/bin/env python3
"""Front-path capacity of the worker: CPU of ALL its processes per stream-second, and latency.

For each stream count it starts the production worker (`python -m asr_worker serve --engine
fake`: the process tree of supervisor + engine + fronts, default front count unless
--front-processes), waits for SERVING, runs bench/load-client.ts against it over gRPC
(real-time paced 60 ms frames of the shared recordings), and reports:

- worker CPU (utime+stime of the supervisor and every child, from /proc) per second of audio
  streamed, in ms per stream-second, and per process;
- final after VAD end p95, first partial after speech start p95, sessions with errors;
- the time-weighted mean and the peak number of live streams (sending audio), so that "N
  streams" says how many were really live.

    worker-py/.venv/bin/python bench/front_capacity.py --streams 100,200   # sustained, 40 s
    worker-py/.venv/bin/python bench/front_capacity.py --streams 100,200 --sustain-s 0  # old mode
    worker-py/.venv/bin/python bench/front_capacity.py --streams 100 --together   # all at once
    worker-py/.venv/bin/python bench/front_capacity.py --streams 100 --profile-s 20 # + py-spy
    worker-py/.venv/bin/python bench/front_capacity.py --streams 100 --together --frame-ms 120

`--frame-ms` sets the audio per gRPC message (same recordings, same real-time pacing), so
60 vs 120 ms says how much of the cost is paid per message rather than per second of audio.

By default the run is sustained (`--sustain-s 40`): each of the N streams starts within the
3 s ramp at its own phase of the frame period and stays live until 40 s after the ramp, playing
session after session back to back, each session `--session-files` (2) DIFFERENT recordings
back to back, stream i starting at recording i: N live streams whose segment and session
boundaries are staggered. `--sustain-s 0` is the mode used until 2026-11-30 ("staggered"): one
session per stream playing ONE recording once, so concurrency falls off as the short recordings
end (100 streams averaged ~36 live).

`--together` starts every stream within one frame period and plays the same file in all of
them, so all streams are live for their whole length (no staggered ends flatter the figure).
`--profile-s S` records a py-spy profile of every worker process for S seconds of the run
(collapsed stacks, `py-spy record -f raw`, in --out). The fake engine costs `--fake-base-ms + n x
--fake-per-item-ms` per batch, spent sleeping on the engine's batch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "worker-py"
PYTHON = WORKER / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Worker:
    """The worker as a subprocess, with its children's pids from the 'worker started' line."""

    def __init__(self, args: argparse.Namespace, streams: int) -> None:
        cmd = [str(PYTHON), "-m", "asr_worker", "serve", "--engine", "fake",
               "--listen", "127.0.0.1:0", "--max-streams", str(max(64, streams + 16)),
               "--fake-base-ms", str(args.fake_base_ms),
               "--fake-per-item-ms", str(args.fake_per_item_ms),
               "--max-batch-size", str(args.max_batch_size)]
        if args.front_processes is not None:
            cmd += ["--front-processes", str(args.front_processes)]
        cmd += args.worker_arg
        self.proc = subprocess.Popen(cmd, cwd=WORKER, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pids: dict[str, int] = {"supervisor": self.proc.pid}
        self.stderr: list[str] = []
        started = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if '"worker started"' in line:
                    rec = json.loads(line)
                    for kv in rec["pids"].split(","):
                        name, pid = kv.split("=")
                        self.pids[name.replace(" ", "")] = int(pid)
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            raise SystemExit(f"worker did not start: {''.join(self.stderr)[-2000:]}")
        self.address = line.split()[1]
        if not started.wait(120):
            # --front-processes 0: one process, no 'worker started' line.
            pass

    def wait_serving(self) -> None:
        sys.path.insert(0, str(WORKER))
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit("worker never became SERVING")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sustain_s(args: argparse.Namespace) -> float:
    """Seconds every stream stays live after the ramp; 0 for --together and the old staggered mode."""
    return 0.0 if args.together else args.sustain_s


def mode_name(args: argparse.Namespace) -> str:
    """How streams are laid out in time, for file names and the table."""
    if args.together:
        return "together"
    return f"sustained{sustain_s(args):g}s" if sustain_s(args) else "staggered-once"


def run_one(args: argparse.Namespace, streams: int, out_dir: Path) -> dict:
    w = Worker(args, streams)
    try:
        w.wait_serving()
        load_json = out_dir / f"load-{streams}-{mode_name(args)}-{args.frame_ms}ms.json"
        # Together: the 22.7 s three-utterance recording, twice, in every stream (6 segments).
        files = args.files or ("synth/three_utterances.wav" if args.together else "")
        loops = args.loops or (2 if args.together else 1)
        cmd = ["npm", "run", "-s", "bench:load", "--", "--target", f"grpc://{w.address}",
               "--streams", str(streams), "--loops", str(loops), "--json", str(load_json),
               "--ramp-ms", str(args.frame_ms if args.together else args.ramp_ms),
               "--max-seconds", str(args.max_seconds), "--frame-ms", str(args.frame_ms)]
        if args.coalesce_ms is not None:
            cmd += ["--coalesce-ms", args.coalesce_ms]
        if files:
            cmd += ["--files", files]
        if sustain_s(args):
            cmd += ["--sustain-s", str(sustain_s(args)), "--session-files", str(args.session_files)]
        profilers = []
        cpu0 = {name: cpu_seconds(pid) for name, pid in w.pids.items()}
        t0 = time.monotonic()
        load = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if args.profile_s:
            time.sleep(args.ramp_ms / 1000 + 2)
            for name, pid in w.pids.items():
                if name == "supervisor":
                    continue
                stacks = out_dir / f"profile-{streams}-{name}.txt"
                profilers.append(subprocess.Popen(
                    [str(WORKER / ".venv" / "bin" / "py-spy"), "record", "-p", str(pid), "-d",
                     str(int(args.profile_s)), "-r", "50", "-f", "raw", "-o", str(stacks),
                     "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=open(f"{stacks}.log", "w")))
        load_out, _ = load.communicate()
        wall = time.monotonic() - t0
        cpu1 = {name: cpu_seconds(pid) for name, pid in w.pids.items()}
        for p in profilers:
            p.wait()
        if load.returncode != 0 or not load_json.exists():
            raise SystemExit(f"load client failed:\n{load_out[-3000:]}")
        result = json.loads(load_json.read_text())
    finally:
        w.stop()
    s = result["summary"]
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
    total = sum(cpu.values())
    steady = result.get("steady") or {}
    live = result["liveStreams"]
    return {
        "streams": streams,
        "mode": mode_name(args),
        "live_streams_mean": live["mean"],
        "live_streams_peak": live["peak"],
        "together": args.together,
        "frame_ms": args.frame_ms,
        "processes": len(w.pids),
        "audio_s": s["audioSeconds"],
        "wall_s": wall,
        "worker_cpu_s": total,
        "cpu_ms_per_stream_s": 1000 * total / s["audioSeconds"],
        "cores": total / wall,
        "cpu_by_process_s": cpu,
        "final_after_vad_end_p95_ms": s["finalAfterVadEndMs"]["p95"],
        "first_partial_p95_ms": s["firstPartialMs"]["p95"],
        "steady_final_after_speech_end_p95_ms": (steady.get("finalAfterSpeechEndMs") or {}).get("p95"),
        "steady_first_partial_p95_ms": (steady.get("firstPartialMs") or {}).get("p95"),
        "sessions": s["sessions"],
        "sessions_with_errors": s["sessionsWithErrors"],
        "errors": s["errors"][:5],
        "loadgen_cores": result.get("loadgenCores"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="100,200", help="comma-separated stream counts")
    p.add_argument("--front-processes", type=int, default=None, help="default: the worker's own default")
    p.add_argument("--together", action="store_true", help="all streams start at once, same file")
    p.add_argument("--sustain-s", type=float, default=40.0,
                   help="every stream live this long after the ramp, session after session "
                        "(0: the old mode, one session of one recording per stream)")
    p.add_argument("--session-files", type=int, default=2,
                   help="different recordings back to back per session in sustained mode")
    p.add_argument("--files", default="", help="load-client --files (default: its five recordings)")
    p.add_argument("--loops", type=int, default=0, help="default 1 (2 with --together)")
    p.add_argument("--ramp-ms", type=int, default=3000)
    p.add_argument("--frame-ms", type=int, default=60, help="audio per gRPC message (load-client)")
    p.add_argument("--coalesce-ms", default=None,
                   help="load-client --coalesce-ms (ms or turn; default: WORKER_WRITE_COALESCE_MS's)")
    p.add_argument("--max-seconds", type=int, default=300)
    p.add_argument("--fake-base-ms", type=float, default=5.0)
    p.add_argument("--fake-per-item-ms", type=float, default=0.1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra `serve` argument, repeatable (e.g. --worker-arg=--vad-batch-ms=32)")
    p.add_argument("--profile-s", type=float, default=0.0, help="py-spy every worker process this long")
    p.add_argument("--out", type=Path, default=None, help="directory for JSON and profiles")
    args = p.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="front-capacity-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(x) for x in args.streams.split(",") if x]:
        row = run_one(args, n, out_dir)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'streams':>8} {'mode':>16} {'live mean/peak':>15} {'procs':>5} {'ms CPU/stream-s':>16} "
          f"{'cores':>6} {'final p95':>10} {'1st partial p95':>16} {'errors':>7}")
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for r in rows:
        live = f"{r['live_streams_mean']:.1f}/{r['live_streams_peak']}"
        print(f"{r['streams']:>8} {r['mode']:>16} {live:>15} {r['processes']:>5} "
              f"{r['cpu_ms_per_stream_s']:>16.2f} "
              f"{r['cores']:>6.2f} {ms(r['final_after_vad_end_p95_ms']):>10} "
              f"{ms(r['first_partial_p95_ms']):>16} {r['sessions_with_errors']:>7}")
    (out_dir / "front_capacity.json").write_text(json.dumps(rows, indent=2))
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
