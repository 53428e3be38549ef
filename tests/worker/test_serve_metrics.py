"""`serve --metrics-port` as a real subprocess: one /metrics, scraped over a real socket and
read with prometheus_client's own parser, carries the numbers of every process of the worker
(the engine process and each front, or the single process with --front-processes 0) after a
real stream of speech; SIGTERM stops it and removes its metrics directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_testkit import read_wav, requests_for, wait_serving

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(180)

WORKER = Path(__file__).resolve().parents[2] / "worker-py"


def _start(fronts: int) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen", "127.0.0.1:0",
         "--front-processes", str(fronts), "--torch-threads", "1", "--fake-base-ms", "2",
         "--fake-per-item-ms", "1", "--metrics-port", "0", "--log-level", "warning"],
        cwd=WORKER, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(WORKER)},
    )
    metrics_port = None
    for line in proc.stdout:
        if line.startswith("METRICS 127.0.0.1:"):
            metrics_port = int(line.split(":")[-1])
        if line.startswith("LISTENING 127.0.0.1:"):
            assert metrics_port is not None, "METRICS is printed before LISTENING"
            return proc, line.split()[1], metrics_port
    raise AssertionError(f"worker exited {proc.wait()} without LISTENING")


def _wait_serving(address: str) -> None:
    with grpc.insecure_channel(address) as ch:
        wait_serving(ch, 90)


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return {f.name: f.samples for f in text_string_to_metric_families(r.read().decode())}


def _value(families: dict[str, list], family: str, sample: str, **labels: str) -> float:
    return sum(s.value for s in families.get(family, [])
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def _stream(address: str, pcm: bytes) -> list:
    with grpc.insecure_channel(address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        # Retried: a front may still be warming when health first reads SERVING.
        deadline = time.monotonic() + 60
        while True:
            try:
                config = asr_pb2.StreamingConfig(mode=asr_pb2.RECOGNITION_MODE_TWO_PASS, sample_rate_hz=16000)
                return list(stub.StreamingRecognize(iter(requests_for(pcm, config=config)), timeout=60))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.mark.parametrize("fronts", [2, 0], ids=["engine+2 fronts", "one process"])
def test_metrics_port_serves_every_worker_process_after_a_real_stream(fronts: int,
                                                                     shared_audio: Path) -> None:
    samples, rate = read_wav(shared_audio / "zh" / "damo.wav")
    assert rate == 16000
    pcm = samples.astype("<i2").tobytes()
    proc, address, port = _start(fronts)
    try:
        _wait_serving(address)  # the engine process records from when its model is loaded
        before = _scrape(port)
        # Every process of the worker is in the scrape, each with its own pid.
        live = [s for s in before["asr_worker_processes"] if s.value == 1]
        roles = sorted(s.labels["role"] for s in live)
        assert roles == (["engine", "front", "front"] if fronts == 2 else ["worker"]), live
        pids = {s.labels["pid"] for s in live}
        assert len(pids) == len(live)

        responses = _stream(address, pcm)
        assert any(r.HasField("final") for r in responses), responses
        deadline = time.monotonic() + 10  # the engine samples its gauges every second
        while True:
            m = _scrape(port)
            settled = _value(m, "asr_worker_streams", "asr_worker_streams") == 0
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        seconds = len(samples) / 16000
        # Audio in and VAD work are counted where they happen (a front), engine calls in the engine.
        audio = _value(m, "asr_worker_audio_seconds", "asr_worker_audio_seconds_total")
        assert audio == pytest.approx(seconds)
        assert _value(m, "asr_worker_vad_windows", "asr_worker_vad_windows_total") == len(samples) // 512
        assert _value(m, "asr_worker_vad_seconds", "asr_worker_vad_seconds_count") >= 1
        calls = _value(m, "asr_worker_batch_size", "asr_worker_batch_size_count")
        assert calls >= 1
        assert _value(m, "asr_worker_engine_seconds", "asr_worker_engine_seconds_count") == calls
        kinds = {s.labels["kind"] for s in m["asr_worker_engine_seconds"] if s.name.endswith("_count")}
        assert kinds & {"final", "mixed"} and kinds <= {"final", "partial", "mixed"}, kinds
        assert "asr_worker_queue_depth" in m
        assert _value(m, "asr_worker_streams", "asr_worker_streams") == 0, "the stream has ended"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # The metrics directory (its files are named by the pids of the processes) is gone.
    leftovers = [f for d in Path(tempfile.gettempdir()).glob("asr-worker-metrics-*") for f in d.iterdir()
                 if any(f.name.endswith(f"_{pid}.db") for pid in pids)]
    assert not leftovers, leftovers
