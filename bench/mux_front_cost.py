#!/usr/bin/env python3
"""The worker front's CPU with StreamingRecognizeMux vs one StreamingRecognize call per stream.

Starts the production worker (`python -m asr_worker serve --engine fake`, the process tree of
bench/front_capacity.py; one front + engine by default on 2 vCPUs), then N streams of real
speech (the shared recordings back to back, stream i starting at its own recording and at its
own phase of the frame period), 60 ms PCM16 frames paced in real time for `--seconds`, then
END_OF_INPUT and a half-close. Frames due are written every `--flush-ms` (4 ms, the gateway's
default write hold), either

- `calls`: one StreamingRecognize call per stream, one message per frame (what a gateway
  without mux writes), or
- `mux`: one StreamingRecognizeMux call carrying every stream as a session, one message per
  flush holding every frame due (what a gateway with mux writes),

and reports the worker's CPU (utime+stime of every process, from /proc) per stream-second of
audio and per frame, the messages each side sent, and the ratio mux/calls per repeat. Modes
alternate within a repeat, so a repeat's pair shares the box's conditions.

    worker-py/.venv/bin/python bench/mux_front_cost.py --streams 100 --seconds 20 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker-py"))

from front_capacity import Worker, cpu_seconds  # noqa: E402  (bench/ is not a package)

AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", ROOT.parent / "shared" / "audio"))
FILES = ("zh/damo.wav", "zh/mid.wav", "zh/binhai.wav", "synth/three_utterances.wav", "zh/long.wav")


def _pcm(name: str) -> bytes:
    import soundfile as sf

    data, rate = sf.read(str(AUDIO / name), dtype="int16")
    assert rate == 16000, name
    return data.tobytes()


class _Streams:
    """The audio of every stream: the recordings back to back from stream i's own one."""

    def __init__(self, streams: int, seconds: float, frame_ms: int) -> None:
        clips = [_pcm(f) for f in FILES]
        self.frame_bytes = 32 * frame_ms
        self.frames = int(seconds * 1000 // frame_ms)
        need = self.frames * self.frame_bytes
        self.audio = []
        for i in range(streams):
            buf = b""
            k = i
            while len(buf) < need:
                buf += clips[k % len(clips)]
                k += 1
            self.audio.append(buf[:need])

    def frame(self, stream: int, k: int) -> bytes:
        return self.audio[stream][k * self.frame_bytes:(k + 1) * self.frame_bytes]


def _schedule(streams: int, frames: int, frame_s: float):
    """(due time, stream, frame index) for every frame, in time order."""
    out = [(k * frame_s + i * frame_s / streams, i, k) for i in range(streams) for k in range(frames)]
    out.sort()
    return out


async def _paced(schedule, flush_s: float, send_batch) -> None:
    """Call send_batch([(stream, k), ...]) every flush_s with the frames due by then."""
    t0 = time.monotonic()
    j = 0
    while j < len(schedule):
        now = time.monotonic() - t0
        batch = []
        while j < len(schedule) and schedule[j][0] <= now:
            batch.append(schedule[j][1:])
            j += 1
        if batch:
            await send_batch(batch)
        await asyncio.sleep(flush_s)


async def run_calls(address: str, st: _Streams, n: int, frame_s: float, flush_s: float) -> dict:
    import grpc

    from asr.v1 import asr_pb2, asr_pb2_grpc

    cfg = asr_pb2.StreamingConfig(sample_rate_hz=16000, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        calls = [stub.StreamingRecognize() for _ in range(n)]
        received = [0]

        async def drain(call):
            async for _ in call:
                received[0] += 1

        readers = [asyncio.create_task(drain(c)) for c in calls]
        for c in calls:
            await c.write(asr_pb2.StreamingRecognizeRequest(config=cfg))
        sent = [0]

        async def send(batch):
            for i, k in batch:
                await calls[i].write(asr_pb2.StreamingRecognizeRequest(
                    audio=asr_pb2.AudioChunk(pcm16le=st.frame(i, k))))
            sent[0] += len(batch)

        await _paced(_schedule(n, st.frames, frame_s), flush_s, send)
        eoi = asr_pb2.StreamingRecognizeRequest(
            control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))
        for c in calls:
            await c.write(eoi)
            await c.done_writing()
        await asyncio.gather(*readers)
        codes = [await c.code() for c in calls]
    assert all(c == grpc.StatusCode.OK for c in codes), codes
    return {"messages_sent": sent[0] + 2 * n, "messages_received": received[0], "events": received[0]}


async def run_mux(address: str, st: _Streams, n: int, frame_s: float, flush_s: float) -> dict:
    import grpc

    from asr.v1 import asr_pb2, asr_pb2_grpc

    cfg = asr_pb2.StreamingRecognizeRequest(config=asr_pb2.StreamingConfig(
        sample_rate_hz=16000, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS))
    async with grpc.aio.insecure_channel(address) as ch:
        call = asr_pb2_grpc.AsrStub(ch).StreamingRecognizeMux()
        ends: dict[int, int] = {}
        counts = {"messages": 0, "events": 0}
        all_ended = asyncio.Event()

        async def drain():
            async for msg in call:
                counts["messages"] += 1
                counts["events"] += len(msg.events)
                for ev in msg.events:
                    if ev.HasField("end"):
                        ends[ev.session] = ev.end.code
                if len(ends) == n:
                    all_ended.set()

        reader = asyncio.create_task(drain())
        await call.write(asr_pb2.StreamingRecognizeMuxRequest(
            frames=[asr_pb2.MuxFrame(session=i, request=cfg) for i in range(n)]))
        sent = [1]

        async def send(batch):
            await call.write(asr_pb2.StreamingRecognizeMuxRequest(frames=[
                asr_pb2.MuxFrame(session=i, request=asr_pb2.StreamingRecognizeRequest(
                    audio=asr_pb2.AudioChunk(pcm16le=st.frame(i, k)))) for i, k in batch]))
            sent[0] += 1

        await _paced(_schedule(n, st.frames, frame_s), flush_s, send)
        eoi = asr_pb2.StreamingRecognizeRequest(
            control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))
        await call.write(asr_pb2.StreamingRecognizeMuxRequest(
            frames=[f for i in range(n) for f in (asr_pb2.MuxFrame(session=i, request=eoi),
                                                   asr_pb2.MuxFrame(session=i, half_close=True))]))
        sent[0] += 1
        await asyncio.wait_for(all_ended.wait(), 60)
        await call.done_writing()
        await reader
        assert await call.code() == grpc.StatusCode.OK
    assert set(ends.values()) == {0}, ends
    return {"messages_sent": sent[0], "messages_received": counts["messages"], "events": counts["events"]}


def measure(args: argparse.Namespace, mode: str, st: _Streams) -> dict:
    w = Worker(args, args.streams)
    try:
        w.wait_serving()
        time.sleep(1.0)
        cpu0 = {name: cpu_seconds(pid) for name, pid in w.pids.items()}
        t0 = time.monotonic()
        profiler = None
        if args.profile_s:
            stacks = Path(args.profile_out) / f"mux-front-{mode}-{os.getpid()}-{time.time():.0f}.txt"
            profiler = subprocess.Popen(
                [str(ROOT / "worker-py" / ".venv" / "bin" / "py-spy"), "record", "-p",
                 str(w.pids.get("front0", w.proc.pid)), "-d", str(int(args.profile_s)), "-r", "100",
                 "-f", "raw", "-o", str(stacks), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"profile: {stacks}", flush=True)
        runner = run_mux if mode == "mux" else run_calls
        counts = asyncio.run(runner(w.address, st, args.streams, args.frame_ms / 1000, args.flush_ms / 1000))
        wall = time.monotonic() - t0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in w.pids.items()}
        if profiler is not None:
            profiler.wait()
    finally:
        w.stop()
    total = sum(cpu.values())
    frames = args.streams * st.frames
    audio_s = frames * args.frame_ms / 1000
    return {
        "mode": mode,
        "streams": args.streams,
        "wall_s": round(wall, 1),
        "worker_cpu_s": round(total, 2),
        "cpu_by_process_s": {k: round(v, 2) for k, v in cpu.items()},
        "ms_per_stream_s": round(1000 * total / audio_s, 3),
        "us_per_frame": round(1e6 * total / frames, 1),
        "frames": frames,
        **counts,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    p.add_argument("--frame-ms", type=int, default=60)
    p.add_argument("--flush-ms", type=float, default=4.0, help="client write hold (the gateway's)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--modes", default="calls,mux")
    p.add_argument("--front-processes", type=int, default=None, help="default: the worker's own default")
    p.add_argument("--fake-base-ms", type=float, default=5.0)
    p.add_argument("--fake-per-item-ms", type=float, default=0.1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--worker-arg", action="append", default=[], help="extra `serve` argument")
    p.add_argument("--profile-s", type=float, default=0.0,
                   help="py-spy the front (front0) this long from the start of each run")
    p.add_argument("--profile-out", default="/tmp", help="directory for the py-spy stacks")
    p.add_argument("--json", type=Path, default=None, help="write every row here as JSON")
    args = p.parse_args()
    st = _Streams(args.streams, args.seconds, args.frame_ms)
    rows = []
    for rep in range(args.repeats):
        pair = {}
        for mode in [m for m in args.modes.split(",") if m]:
            row = measure(args, mode, st)
            row["repeat"] = rep
            pair[mode] = row
            rows.append(row)
            print(json.dumps(row), flush=True)
        if "mux" in pair and "calls" in pair:
            print(f"repeat {rep}: mux/calls worker CPU = "
                  f"{pair['mux']['worker_cpu_s'] / pair['calls']['worker_cpu_s']:.3f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"{'mode':>6} {'ms CPU/stream-s':>16} {'µs/frame':>9} {'msgs sent':>10} "
          f"{'msgs recv':>10} {'events':>7}")
    for r in rows:
        print(f"{r['mode']:>6} {r['ms_per_stream_s']:>16.3f} {r['us_per_frame']:>9.1f} "
              f"{r['messages_sent']:>10} {r['messages_received']:>10} {r['events']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
