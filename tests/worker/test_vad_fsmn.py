"""FunASR fsmn-vad as a VAD backend (`--vad fsmn --vad-model-dir DIR`).

A tiny random-weight fsmn-vad directory (asr_worker.vad_tiny: config.yaml in the
released model's structure with small dims, model.pt from the model's state_dict,
a Kaldi-style am.mvn) is built offline and loaded through the production path with the socket
layer blocked. Random weights cannot find the right segments, so these tests
check the streaming contract (incremental, chunking-invariant, one probability
per 512-sample window), well-formed events through a real session, and the CLI;
the real-weights test (segment positions) runs only with ASR_FSMN_VAD_DIR set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc
from asr_worker.vad_tiny import build_fsmn_vad_dir, fsmn_vad_config

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "worker-py"

@pytest.fixture(scope="module")
def fsmn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fsmn_vad_dir(tmp_path_factory.mktemp("vad") / "fsmn-vad-tiny")


@pytest.fixture(scope="module")
def fsmn(fsmn_dir: Path, no_network):
    from asr_worker.vad import FsmnVad

    return FsmnVad(fsmn_dir)


@pytest.fixture(scope="module")
def damo(shared_audio: Path) -> np.ndarray:
    pcm, rate = read_wav(shared_audio / "zh" / "damo.wav")
    assert rate == 16000
    return pcm.astype(np.float32) / 32768.0


def test_network_is_blocked(no_network):
    with pytest.raises(no_network):
        socket.create_connection(("modelscope.cn", 443), timeout=1)


def test_streams_incrementally_one_probability_per_window(fsmn, damo):
    from asr_worker.vad import WINDOW_SAMPLES

    stream = fsmn.new_stream()
    fed, probs = 0, []
    for i in range(0, len(damo), 960):  # 60 ms chunks, as the gateway sends them
        chunk = damo[i:i + 960]
        fed += len(chunk)
        p = stream.process(chunk)
        probs.append(p)
        # Every completed window is scored as soon as its samples arrive.
        assert sum(len(x) for x in probs) == fed // WINDOW_SAMPLES
    probs = np.concatenate(probs)
    assert probs.dtype == np.float32 and len(probs) == len(damo) // WINDOW_SAMPLES
    assert np.all((probs >= 0) & (probs <= 1)) and np.isfinite(probs).all()
    assert probs.std() > 0  # the model reacts to the audio

    # Chunking does not matter: the whole file in one call gives the same values.
    whole = fsmn.new_stream()
    np.testing.assert_allclose(fsmn.score([(whole, whole.take_windows(damo))])[0], probs,
                               rtol=0, atol=1e-5)


def test_streams_are_independent_in_one_batch(fsmn, damo):
    """Two streams scored in one call (as the VadBatcher does) equal each alone."""
    a, b = fsmn.new_stream(), fsmn.new_stream()
    noise = (np.random.default_rng(0).standard_normal(len(damo)) * 0.01).astype(np.float32)
    ra, rb = fsmn.score([(a, a.take_windows(damo)), (b, b.take_windows(noise))])
    alone = fsmn.new_stream()
    np.testing.assert_allclose(alone.process(damo), ra, rtol=0, atol=1e-5)
    assert not np.allclose(ra[: len(rb)], rb)


def _funasr_reference(fsmn_dir: Path, x: np.ndarray) -> np.ndarray:
    """One stream through FunASR's own streaming path, window by window: its frontend and
    `FSMN.forward(feats, cache)` with its cache dict; per window the mean speech probability
    of the frames it completes (the last value when it completes none)."""
    from asr_worker.vad import WINDOW_SAMPLES, FsmnVad

    ref = FsmnVad(fsmn_dir)  # fresh weights holder: nothing shared with the model under test
    frontend, encoder = ref._frontend, ref._model.encoder
    fcache: dict = {}
    ecache: dict = {}
    out, last = [], 0.0
    with torch.inference_mode():
        for i in range(len(x) // WINDOW_SAMPLES):
            w = torch.from_numpy(x[i * WINDOW_SAMPLES:(i + 1) * WINDOW_SAMPLES])[None]
            feats, _ = frontend(w, torch.tensor([w.shape[1]]), cache=fcache, is_final=False)
            if feats.numel():
                post = encoder(feats, cache=ecache)[0]
                last = float((1.0 - post[:, ref.sil_pdf_ids].sum(-1)).clamp(0, 1).mean())
            out.append(last)
    return np.array(out, dtype=np.float32)


def test_batched_scoring_equals_funasrs_own_streaming_per_stream(fsmn, fsmn_dir, shared_audio):
    """Streams with uneven window counts share one encoder pass per batch, and each stream's
    probabilities equal FunASR's own streaming encoder run on that stream alone."""
    files = ["zh/damo.wav", "zh/binhai.wav", "synth/three_utterances.wav"]
    xs = [read_wav(shared_audio / f)[0][:40_000].astype(np.float32) / 32768.0 for f in files]
    streams = [fsmn.new_stream() for _ in xs]
    got: list[list[np.ndarray]] = [[] for _ in xs]
    pos = [0] * len(xs)
    for tick in range(100):
        jobs, owners = [], []
        for k, (s, x) in enumerate(zip(streams, xs, strict=True)):
            if k == 2 and tick % 3:  # stream 2 sends a big chunk every third tick only
                continue
            n = (700, 1500, 4000)[k]
            w = s.take_windows(x[pos[k]:pos[k] + n])
            pos[k] += n
            if len(w):
                jobs.append((s, w))
                owners.append(k)
        if not jobs and min(pos) >= 40_000:
            break
        for k, r in zip(owners, fsmn.score(jobs), strict=True):
            got[k].append(r)
    for k, x in enumerate(xs):
        expected = _funasr_reference(fsmn_dir, x)
        np.testing.assert_allclose(np.concatenate(got[k]), expected, rtol=0, atol=1e-5,
                                   err_msg=files[k])


def _check_well_formed(responses: list, audio_ms: int) -> list:
    """Speech events alternate START/END per segment, each END followed by one final."""
    open_seg, finals, events = None, [], []
    for r in responses:
        kind = r.WhichOneof("streaming_response")
        if kind == "speech_event":
            ev = r.speech_event
            events.append(ev)
            assert 0 <= ev.offset_ms <= audio_ms + 100
            if ev.type == asr_pb2.SPEECH_EVENT_TYPE_START:
                assert open_seg is None
                open_seg = ev
            else:
                assert open_seg is not None and ev.segment_id == open_seg.segment_id
                assert ev.offset_ms >= open_seg.offset_ms
                open_seg = None
        elif kind == "final":
            assert open_seg is None
            finals.append(r.final)
    assert open_seg is None
    ids = [f.segment_id for f in finals]
    assert ids == sorted(set(ids)) and ids
    for f in finals:
        assert f.start_ms <= f.end_ms <= audio_ms + 100
    assert responses[-1].WhichOneof("streaming_response") == "end_of_input"
    return events


async def test_session_streams_damo_through_fsmn(fsmn, damo):
    """The in-process worker with fsmn-vad: events are well formed (positions not checked)."""
    import grpc

    from asr_worker.session import SessionOptions
    from asr_worker.vad import VadConfig

    # Random weights: pick thresholds inside this model's range so segments do happen.
    probs = fsmn.new_stream().process(damo)
    hi, lo = (float(np.quantile(probs, q)) for q in (0.6, 0.4))
    vad_cfg = VadConfig(threshold=min(max(hi, 0.02), 0.98), neg_threshold=max(min(lo, hi), 0.01),
                        min_speech_ms=64, min_silence_ms=96, short_silence_ms=96)
    pcm = (damo * 32768).astype(np.int16).tobytes()
    config = asr_pb2.StreamingConfig(sample_rate_hz=16000, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS)
    async with start_worker(fsmn, session=SessionOptions(vad=vad_cfg)) as w:
        assert w.service.vad_batcher._vad is fsmn
        async with grpc.aio.insecure_channel(w.address) as ch:
            call = asr_pb2_grpc.AsrStub(ch).StreamingRecognize(
                iter(requests_for(pcm, config=config)))
            responses = await collect(call)
    events = _check_well_formed(responses, len(damo) * 1000 // 16000)
    assert events, "thresholds inside the model's range must produce segments"


def test_session_interface_is_the_silero_one(fsmn):
    """What Session and VadBatcher use: new_stream, take_windows, process, score."""
    from asr_worker.vad import SileroVad

    for attr in ("new_stream", "score", "name"):
        assert hasattr(fsmn, attr) and hasattr(SileroVad, attr)
    s = fsmn.new_stream()
    assert s.take_windows(np.zeros(700, dtype=np.float32)).shape == (1, 512)
    assert s.process(np.zeros(100, dtype=np.float32)).shape == (0,)
    assert s.process(np.zeros(400, dtype=np.float32)).shape == (1,)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("missing", ["config.yaml", "model.pt", "am.mvn"])
def test_incomplete_dir_is_a_model_load_error(fsmn_dir: Path, tmp_path: Path, missing: str):
    from asr_worker.errors import ModelLoadError
    from asr_worker.vad import FsmnVad

    d = tmp_path / "incomplete"
    d.mkdir()
    for f in ("config.yaml", "model.pt", "am.mvn"):
        if f != missing:
            (d / f).write_bytes((fsmn_dir / f).read_bytes())
    with pytest.raises(ModelLoadError, match=f"incomplete: missing {missing}"):
        FsmnVad(d)


def test_weights_that_do_not_match_config_are_refused(fsmn_dir: Path, tmp_path: Path, no_network):
    from asr_worker.errors import ModelLoadError
    from asr_worker.vad import FsmnVad

    d = tmp_path / "mismatch"
    d.mkdir()
    for f in ("model.pt", "am.mvn"):
        (d / f).write_bytes((fsmn_dir / f).read_bytes())
    cfg = fsmn_vad_config()
    cfg["encoder_conf"]["linear_dim"] = 24
    (d / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ModelLoadError) as err:
        FsmnVad(d)
    assert "\n" not in str(err.value)


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr_worker", "serve", "--listen", "127.0.0.1:0",
         "--engine", "fake", *args],
        cwd=WORKER, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--vad", "fsmn", "--vad-model-dir", "/nonexistent/fsmn"], "does not exist"),
        (["--vad", "fsmn"], "fsmn-vad needs --vad-model-dir"),
    ],
)
def test_cli_missing_dir_is_one_line_and_exit_2(args, needle):
    proc = _serve(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("asr_worker: error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr and "LISTENING" not in proc.stdout


def test_cli_unloadable_dir_is_one_line_and_exit_2(tmp_path: Path):
    for f in ("config.yaml", "model.pt", "am.mvn"):
        (tmp_path / f).write_bytes(b"")
    proc = _serve("--vad", "fsmn", "--vad-model-dir", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load fsmn-vad" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "LISTENING" not in proc.stdout


def test_cli_serves_with_fsmn(fsmn_dir: Path, damo):
    """`serve --vad fsmn --vad-model-dir DIR` listens, segments a stream, drains on SIGTERM."""
    import grpc

    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen", "127.0.0.1:0",
         "--vad", "fsmn", "--vad-model-dir", str(fsmn_dir), "--drain-grace-s", "5",
         "--torch-threads", "1"],
        cwd=WORKER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:"), proc.stderr.read() if not line else line
        address = line.split()[1]
        pcm = (damo * 32768).astype(np.int16).tobytes()
        config = asr_pb2.StreamingConfig(sample_rate_hz=16000)
        with grpc.insecure_channel(address) as ch:
            stub = asr_pb2_grpc.AsrStub(ch)
            deadline = time.monotonic() + 30
            while True:
                try:
                    responses = list(stub.StreamingRecognize(iter(requests_for(pcm, config=config))))
                    break
                except grpc.RpcError as exc:  # still warming up
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        _check_well_formed(responses, len(damo) * 1000 // 16000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- real weights


def test_real_weights_find_three_utterances(shared_audio: Path, audio_manifest: dict, no_network):
    """With the released weights (ASR_FSMN_VAD_DIR), three segments within 300 ms."""
    real = os.environ.get("ASR_FSMN_VAD_DIR")
    if not real:
        pytest.skip("ASR_FSMN_VAD_DIR not set (speech_fsmn_vad_zh-cn-16k-common-pytorch)")
    from asr_worker.vad import FSMN_DEFAULT_THRESHOLD, Endpointer, EventKind, FsmnVad, VadConfig

    vad = FsmnVad(Path(real))
    pcm, rate = read_wav(shared_audio / "synth" / "three_utterances.wav")
    assert rate == 16000
    x = pcm.astype(np.float32) / 32768.0
    stream = vad.new_stream()
    ep = Endpointer(VadConfig(threshold=FSMN_DEFAULT_THRESHOLD))
    segments, start = [], None
    for i in range(0, len(x), 960):
        for p in stream.process(x[i:i + 960]):
            for ev in ep.push(float(p)):
                if ev.kind is EventKind.START:
                    start = ev.sample
                else:
                    segments.append((start / 16000, ev.sample / 16000))
    if ep.in_speech:
        segments.append((ep.segment_start / 16000, ep.flush_end(ep.window_end) / 16000))
    expected = [u["segment"] for u in audio_manifest["files"]["synth/three_utterances.wav"]["utterances"]]
    assert len(segments) == 3, segments
    for (s, e), (es, ee) in zip(segments, expected, strict=True):
        assert abs(s - es) <= 0.3 and abs(e - ee) <= 0.3, (segments, expected)


def test_released_shapes_dir_loads_and_streams(tmp_path: Path, damo, no_network):
    """The real-shapes random-weight dir (what bench/vad_cost.py measures) loads through the
    production path with the released model's geometry."""
    from asr_worker.vad import WINDOW_SAMPLES, FsmnVad

    vad = FsmnVad(build_fsmn_vad_dir(tmp_path / "fsmn-real-shapes", real_shapes=True))
    assert vad.memory_shape == (4, 128, 19)
    probs = vad.new_stream().process(damo[:16_000])
    assert len(probs) == 16_000 // WINDOW_SAMPLES and np.isfinite(probs).all()
