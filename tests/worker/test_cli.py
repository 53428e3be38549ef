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


@pytest.mark.parametrize(("cpus", "fronts"), [(1, 1), (2, 1), (3, 2), (8, 7), (64, 16)])
def test_default_front_count_leaves_one_cpu_to_the_engine(cpus, fronts):
    from asr_worker.cli import default_front_processes

    assert default_front_processes(cpus) == fronts


def test_decoder_drafts_flag_turns_the_engines_drafts_on_or_off(tiny_model_dir):
    from asr_worker.cli import build_parser, load_engine

    for flag, expected in ((None, True), ("off", False), ("on", True)):
        argv = ["serve", "--model-dir", str(tiny_model_dir), "--device", "cpu"]
        if flag is not None:
            argv += ["--decoder-drafts", flag]
        assert load_engine(build_parser().parse_args(argv)).use_drafts is expected


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


@pytest.mark.timeout(180)  # builds the tiny model and starts three processes
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


# ------------------------------------------------------------------ check (self-test)


def _report(stdout: str) -> dict[str, str]:
    """The `key: value` lines of a check report (stdout holds nothing else)."""
    lines = stdout.strip().splitlines()
    assert all(": " in line for line in lines), stdout
    return dict(line.split(": ", 1) for line in lines)


@pytest.mark.timeout(300)
def test_check_loads_the_tiny_model_and_reports_device_dtype_time_memory_rtf_text(tiny_model_dir):
    proc = _run("check", "--model-dir", str(tiny_model_dir), "--device", "cpu", timeout=280)
    assert proc.returncode == 0, proc.stderr
    rep = _report(proc.stdout)
    assert (rep["device"], rep["dtype"], rep["check"]) == ("cpu", "fp32", "ok")
    assert float(rep["load_s"]) > 0 and float(rep["decode_s"]) > 0
    rtf = float(rep["decode_s"]) / float(rep["audio_s"])
    assert float(rep["rtf"]) == pytest.approx(rtf, rel=0.01, abs=0.002)
    assert 4.5 < float(rep["audio_s"]) < 4.7  # the clip that ships in the package
    mib, kind = rep["peak_memory_mib"].split(" ", 1)
    assert int(mib) > 50 and "RSS" in kind  # a torch process on CPU: its peak RSS
    assert "text" in rep and rep["reference"] == "欢迎大家来体验达摩院推出的语音识别模型"
    assert rep["cer"].startswith("not judged")  # random weights: the text is noise
    assert rep["timestamps"] == "yes"


@pytest.mark.timeout(400)
def test_check_on_the_release_layout_without_ctc_weights_warns_once(tmp_path):
    built = _run("tiny-model", str(tmp_path / "nano"), "--release-layout", "--no-ctc-weights", timeout=200)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == str(tmp_path / "nano")
    proc = _run("check", "--model-dir", str(tmp_path / "nano"), timeout=280)
    assert proc.returncode == 0, proc.stderr
    rep = _report(proc.stdout)
    assert rep["check"] == "ok" and rep["timestamps"].startswith("no")
    warned = [line for line in proc.stderr.splitlines() if "no token timestamps" in line]
    assert len(warned) == 1, proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model-dir", "/nonexistent/model"], "does not exist"),
        (["--model-dir", "/tmp", "--device", "tpu"], "unknown device"),
        ([], "--model-dir"),
        (["--model-dir", "/tmp", "--max-cer", "-1"], "--max-cer must be >= 0"),
    ],
)
def test_check_misconfiguration_is_one_line_and_exit_2(args, needle):
    proc = _run("check", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.timeout(300)
def test_check_fails_with_one_line_when_a_model_gets_the_clip_wrong(tiny_model_dir, tmp_path):
    # The same random weights, no longer marked as tiny-model output: judged like real
    # weights, their noise must fail the check.
    import json
    import shutil

    d = tmp_path / "unmarked"
    shutil.copytree(tiny_model_dir, d)
    conf = json.loads((d / "configuration.json").read_text(encoding="utf-8"))
    del conf["generated_by"]
    (d / "configuration.json").write_text(json.dumps(conf), encoding="utf-8")
    proc = _run("check", "--model-dir", str(d), timeout=280)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith("asr_worker: error:")]
    assert len(errors) == 1 and "character error rate" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not os.environ.get("ASR_REAL_MODEL_DIR"),
    reason="set ASR_REAL_MODEL_DIR to a real Fun-ASR-Nano-2512 directory",
)
def test_check_real_weights_transcribe_the_clip():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    proc = _run("check", "--model-dir", os.environ["ASR_REAL_MODEL_DIR"], "--device", device, timeout=880)
    assert proc.returncode == 0, proc.stderr
    rep = _report(proc.stdout)
    assert rep["device"].startswith(device) and float(rep["cer"]) <= 0.3, rep
