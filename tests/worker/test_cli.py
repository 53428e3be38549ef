"""The worker CLI as a subprocess: one-line start-up errors with exit 2, LISTENING, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "worker-py"


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr_worker", *args],
        cwd=WORKER, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engine", "funasr-nano", "--model-dir", "/nonexistent/model"], "does not exist"),
        (["--engine", "funasr-nano"], "--model-dir is required"),
        (["--engine", "fake", "--device", "tpu"], "unknown device"),
        (["--engine", "whisper"], "unknown engine"),
        (["--engine", "fake", "--listen", "nonsense"], "HOST:PORT"),
        (["--engine", "fake", "--max-batch-size", "0"], "--max-batch-size"),
        (["--engine", "fake", "--no-such-flag"], "unrecognized arguments"),
        (["--engine", "fake", "--vad", "fsmn"], "fsmn-vad needs --vad-model-dir"),
    ],
)
def test_misconfiguration_is_one_line_and_exit_2(args, needle):
    proc = _run("serve", "--listen", "127.0.0.1:0", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr and "LISTENING" not in proc.stdout


def test_incomplete_model_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    proc = _run("serve", "--listen", "127.0.0.1:0", "--model-dir", str(tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_taken_port_is_one_line_and_exit_2():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("serve", "--engine", "fake", "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0], proc.stderr


def test_cuda_without_gpu_is_one_line_and_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _run("serve", "--listen", "127.0.0.1:0", "--engine", "fake", "--device", "cuda")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0]


def test_default_engine_is_funasr_nano():
    from asr_worker.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.engine == "funasr-nano"


def test_serve_fake_listens_serves_and_drains_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen", "127.0.0.1:0",
         "--drain-grace-s", "5", "--torch-threads", "1"],
        cwd=WORKER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:")
        address = line.split()[1]
        with grpc.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 20
            status = None
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(service="asr.v1.Asr")).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.SERVING
            report = next(asr_pb2_grpc.AsrStub(ch).WatchLoad(asr_pb2.WatchLoadRequest()))
            assert report.engine == "fake" and report.accepting
            assert report.worker_id.endswith(address.rsplit(":", 1)[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # exactly one stdout line
        for line in proc.stderr.read().splitlines():
            assert line.startswith("{"), line  # structured JSON logs only
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_with_an_open_stream_drains_then_ends_it_unavailable(shared_audio):
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen", "127.0.0.1:0",
         "--drain-grace-s", "1", "--torch-threads", "1"],
        cwd=WORKER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )
    try:
        address = proc.stdout.readline().split()[1]
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=20)
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if health.Check(health_pb2.HealthCheckRequest()).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.05)
            sent = []

            def requests():
                yield asr_pb2.StreamingRecognizeRequest(
                    config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
                yield asr_pb2.StreamingRecognizeRequest(
                    audio=asr_pb2.AudioChunk(pcm16le=b"\0\0" * 1600))
                sent.append(True)
                time.sleep(30)  # never ends input by itself

            call = asr_pb2_grpc.AsrStub(ch).StreamingRecognize(requests())
            while not sent:
                time.sleep(0.01)
            time.sleep(0.2)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert 0.8 <= time.monotonic() - t0 < 10
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_tiny_model_stdout_is_only_the_listening_line(tiny_model_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--listen", "127.0.0.1:0",
         "--model-dir", str(tiny_model_dir), "--device", "cpu", "--torch-threads", "1"],
        cwd=WORKER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:"), line
        with grpc.insecure_channel(line.split()[1]) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if health.Check(health_pb2.HealthCheckRequest()).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.1)
            report = next(asr_pb2_grpc.AsrStub(ch).WatchLoad(asr_pb2.WatchLoadRequest()))
            assert report.engine == "funasr-nano" and report.accepting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
