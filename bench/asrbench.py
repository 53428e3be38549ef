"""Shared pieces of the Python benchmarks (worker_batching.py, gpu_capacity.py).

- `spawn_worker`: starts `python -m asr_worker serve ...` and waits for its
  `LISTENING host:port` line and grpc.health.v1 SERVING.
- `run_streams`: C concurrent asr.v1 StreamingRecognize calls over gRPC, each
  sending a WAV file in 60 ms chunks (real time, k x real time, or as fast as
  flow control allows), recording when every chunk was written and when every
  result arrived.
- metrics as the TypeScript load client defines them (bench/lib/metrics.ts):
  first partial after speech start, partial cadence, final after VAD end (the
  worker's SPEECH_EVENT_TYPE_END), final after speech end (audio), final after
  end of input, response lag.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_PY = REPO_ROOT / "worker-py"
if str(WORKER_PY) not in sys.path:
    sys.path.insert(0, str(WORKER_PY))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from asr.v1 import asr_pb2, asr_pb2_grpc  # noqa: E402

SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO_ROOT.parent / "shared" / "audio"))
DEFAULT_FILES = [
    "synth/three_utterances.wav",
    "zh/binhai.wav",
    "zh/damo.wav",
    "zh/long.wav",
    "zh/mid.wav",
]
FRAME_MS = 60


# ----------------------------------------------------------------------------- audio


@dataclass
class Audio:
    name: str
    pcm: bytes  # PCM16 LE mono 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 32000.0

    def frames(self, frame_ms: int = FRAME_MS) -> list[bytes]:
        n = 16 * frame_ms * 2
        return [self.pcm[i : i + n] for i in range(0, len(self.pcm), n)]


def load_audio(names: Iterable[str], loops: int = 1) -> list[Audio]:
    out = []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else SHARED_AUDIO / name
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != 16000:
                raise ValueError(f"{path}: need 16 kHz mono PCM16")
            pcm = w.readframes(w.getnframes())
        out.append(Audio(name, pcm * loops))
    return out


# ----------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    idx = (len(s) - 1) * p / 100.0
    lo = int(idx)
    hi = min(lo + 1, len(s) - 1)
    w = idx - lo
    return s[lo] * (1 - w) + s[hi] * w


def dist(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def f(v: float | None, digits: int = 0) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def latency_cells(r: dict[str, Any]) -> str:
    """The four latency columns both result tables share, as markdown cells (no outer bars):
    first partial p50/p95 | cadence p50/p95 | final after VAD end p50/p95 | final after stop p95."""
    fp, cd, fv, fs = (
        r["first_partial_ms"],
        r["cadence_ms"],
        r["final_after_vad_end_ms"],
        r["final_after_stop_ms"],
    )
    return (
        f"{f(fp['p50'])} / {f(fp['p95'])} | {f(cd['p50'])} / {f(cd['p95'])} "
        f"| {f(fv['p50'])} / {f(fv['p95'])} | {f(fs['p95'])}"
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem, 1),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception:
        pass
    return info


# ----------------------------------------------------------------------------- processes


@dataclass
class Worker:
    proc: subprocess.Popen
    address: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_worker(
    args: Sequence[str],
    *,
    cpus: str | None = None,
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    launcher: Sequence[str] | None = None,
) -> Worker:
    """`python -m asr_worker serve --listen 127.0.0.1:0 <args>`; waits for LISTENING + SERVING.

    launcher replaces `python -m asr_worker` (e.g. bench/capacity_worker.py ... --).
    """
    head = list(launcher) if launcher else [sys.executable, "-m", "asr_worker"]
    cmd = [*head, "serve", "--listen", "127.0.0.1:0", *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    e = {**os.environ, "PYTHONPATH": str(WORKER_PY), **(env or {})}
    stderr = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=e, stdout=subprocess.PIPE, stderr=stderr)
    deadline = time.monotonic() + timeout
    address = None
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
                raise RuntimeError(f"worker exited with {proc.returncode}: {' '.join(cmd)}\n{tail}")
            continue
        text = line.decode(errors="replace").strip()
        if text.startswith("LISTENING "):
            address = text.split()[1]
            break
    if address is None:
        proc.kill()
        raise RuntimeError("worker printed no LISTENING line")
    # Drain stdout so the worker never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    w = Worker(proc, address)
    wait_serving(address, max(1.0, deadline - time.monotonic()))
    return w


def wait_serving(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {address} not SERVING within {timeout:.0f}s")
            time.sleep(0.25)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        rest = stat[stat.rindex(")") + 2 :].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return float("nan")


def proc_tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (the worker is a supervisor with engine and front children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def proc_tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants."""
    return sum(proc_cpu_seconds(p) for p in proc_tree_pids(pid))


def proc_tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    return sum(proc_rss_mib(p) for p in proc_tree_pids(pid))


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ----------------------------------------------------------------------------- streams


@dataclass
class StreamTrace:
    idx: int
    file: str
    audio_s: float
    t0: float = 0.0
    sent_at: list[float] = field(default_factory=list)  # per frame, monotonic seconds
    events: list[tuple[float, str, Any]] = field(default_factory=list)
    stop_at: float | None = None
    ack_at: float | None = None
    done_at: float | None = None
    errors: list[str] = field(default_factory=list)


async def _one_stream(
    stub: asr_pb2_grpc.AsrStub,
    idx: int,
    audio: Audio,
    start_at: float,
    speed: float,
    partial_interval_ms: int,
    call_timeout: float,
) -> StreamTrace:
    tr = StreamTrace(idx, audio.name, audio.seconds)
    frames = audio.frames()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    call = stub.StreamingRecognize(timeout=call_timeout)
    cfg = asr_pb2.StreamingConfig(
        session_id=f"bench-{idx}",
        wav_name=f"bench-{idx}",
        mode=asr_pb2.RECOGNITION_MODE_TWO_PASS,
        sample_rate_hz=16000,
        partial_interval_ms=partial_interval_ms,
    )

    async def reader() -> None:
        try:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    break
                now = time.monotonic()
                kind = r.WhichOneof("streaming_response")
                if kind == "partial":
                    tr.events.append((now, "partial", (r.partial.segment_id, r.partial.audio_end_ms)))
                elif kind == "final":
                    tr.events.append(
                        (
                            now,
                            "final",
                            (
                                r.final.segment_id,
                                r.final.start_ms,
                                r.final.end_ms,
                                tr.stop_at is not None,
                                r.final.reason,
                            ),
                        )
                    )
                elif kind == "speech_event":
                    tr.events.append(
                        (
                            now,
                            "start" if r.speech_event.type == 1 else "end",
                            (r.speech_event.segment_id, r.speech_event.offset_ms),
                        )
                    )
                elif kind == "end_of_input":
                    tr.ack_at = now
                elif kind == "error":
                    tr.errors.append(f"worker error {r.error.code}: {r.error.message}")
        except grpc.aio.AioRpcError as e:
            if tr.ack_at is None:
                tr.errors.append(f"grpc {e.code().name}: {e.details()}")

    try:
        await call.write(asr_pb2.StreamingRecognizeRequest(config=cfg))
        rtask = asyncio.create_task(reader())
        tr.t0 = time.monotonic()
        period = FRAME_MS / 1000.0 / speed if speed > 0 else 0.0
        for j, fr in enumerate(frames):
            if period:
                delay = tr.t0 + j * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await call.write(asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=fr)))
            tr.sent_at.append(time.monotonic())
        tr.stop_at = time.monotonic()
        await call.write(
            asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))
        )
        await call.done_writing()
        await rtask
    except grpc.aio.AioRpcError as e:
        tr.errors.append(f"grpc {e.code().name}: {e.details()}")
    except Exception as e:
        tr.errors.append(f"{type(e).__name__}: {e}")
    tr.done_at = time.monotonic()
    if tr.ack_at is None and not tr.errors:
        tr.errors.append("no end-of-input acknowledgement")
    return tr


async def connections_per_front(address: str, opts: list, attempts_per_front: int = 8) -> list:
    """One aio channel (own connection) per front process of the worker, learnt from
    LoadReport.front_id; a single channel for a single-process worker."""
    found: dict[int, grpc.aio.Channel] = {}
    fronts = 1
    for attempt in range(attempts_per_front * 16):
        ch = grpc.aio.insecure_channel(
            address, options=[*opts, ("grpc.use_local_subchannel_pool", 1), ("bench.conn", attempt)]
        )
        call = asr_pb2_grpc.AsrStub(ch).WatchLoad(asr_pb2.WatchLoadRequest())
        report = await call.read()
        call.cancel()
        fronts = max(1, len(report.front_streams))
        if report.front_id in found:
            await ch.close()
        else:
            found[report.front_id] = ch
        if len(found) >= fronts or attempt + 1 >= attempts_per_front * fronts:
            break
    return list(found.values())


async def run_streams(
    address: str,
    audios: Sequence[Audio],
    streams: int,
    *,
    speed: float = 1.0,
    ramp_s: float = 1.0,
    partial_interval_ms: int = 600,
    call_timeout: float = 300.0,
    channels: int = 1,
) -> tuple[list[StreamTrace], float]:
    """C concurrent streams (file i % len(audios)); returns traces and wall seconds."""
    opts = [("grpc.max_receive_message_length", 8 << 20)]
    if channels == 1:
        # Like a gateway (gateway/src/worker-connections.ts): one connection per front process
        # of the worker, so the streams spread over its fronts.
        chans = await connections_per_front(address, opts)
        channels = len(chans)
    else:
        chans = [
            grpc.aio.insecure_channel(address, options=[*opts, ("bench.channel", i)])
            for i in range(channels)
        ]
    stubs = [asr_pb2_grpc.AsrStub(c) for c in chans]
    t_start = time.monotonic()
    tasks = [
        _one_stream(
            stubs[i % channels],
            i,
            audios[i % len(audios)],
            t_start + (ramp_s * i / streams if streams > 1 else 0.0),
            speed,
            partial_interval_ms,
            call_timeout,
        )
        for i in range(streams)
    ]
    traces = await asyncio.gather(*tasks)
    wall = time.monotonic() - t_start
    for c in chans:
        await c.close()
    return list(traces), wall


def _sent_end(tr: StreamTrace, pos_ms: float) -> float:
    j = min(len(tr.sent_at) - 1, max(0, math.ceil(pos_ms / FRAME_MS) - 1))
    return tr.sent_at[j]


def _sent_start(tr: StreamTrace, pos_ms: float) -> float:
    j = min(len(tr.sent_at) - 1, max(0, int(pos_ms // FRAME_MS)))
    return tr.sent_at[j]


def stream_metrics(traces: Sequence[StreamTrace]) -> dict[str, Any]:
    """Latency metrics in ms (see module docstring)."""
    first_partial, cadence, fin_vad, fin_speech, fin_stop, lag = [], [], [], [], [], []
    partials = finals = 0
    for tr in traces:
        if not tr.sent_at:
            continue
        start_at: dict[int, float] = {}
        end_evt: dict[int, float] = {}
        last_partial: dict[int, float] = {}
        last_final_after_stop = None
        for t, kind, data in tr.events:
            if kind == "start":
                start_at[data[0]] = data[1]
            elif kind == "end":
                end_evt[data[0]] = t
            elif kind == "partial":
                partials += 1
                seg, audio_end = data
                if seg in last_partial:
                    cadence.append((t - last_partial[seg]) * 1000)
                elif seg in start_at:
                    first_partial.append((t - _sent_start(tr, start_at[seg])) * 1000)
                last_partial[seg] = t
                if audio_end:
                    lag.append((t - _sent_end(tr, audio_end)) * 1000)
            elif kind == "final":
                finals += 1
                seg, _s, end_ms, after_stop, reason = data
                if after_stop:
                    last_final_after_stop = t
                if reason != asr_pb2.ENDPOINT_REASON_END_OF_INPUT:  # closed by the VAD (or 30 s cap)
                    fin_speech.append((t - _sent_end(tr, end_ms)) * 1000)
                    if seg in end_evt:
                        fin_vad.append((t - end_evt[seg]) * 1000)
        if tr.stop_at is not None:
            end = last_final_after_stop or tr.ack_at
            if end is not None:
                fin_stop.append((end - tr.stop_at) * 1000)
    return {
        "first_partial_ms": dist(first_partial),
        "cadence_ms": dist(cadence),
        "final_after_vad_end_ms": dist(fin_vad),
        "final_after_speech_end_ms": dist(fin_speech),
        "final_after_stop_ms": dist(fin_stop),
        "lag_ms": dist(lag),
        "partials": partials,
        "finals": finals,
        "errors": sum(len(t.errors) for t in traces),
        "error_samples": [e for t in traces for e in t.errors][:5],
    }


def dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
