"""Streaming VAD on real weights and real speech, and the endpointer state machine."""

from __future__ import annotations

import numpy as np
import pytest
from worker_testkit import read_wav

from asr_worker.vad import WINDOW_SAMPLES, Endpointer, EventKind, VadConfig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def silero_onnx():
    """silero-vad's ONNX file on onnxruntime only."""
    from asr_worker.vad import SileroVad

    return SileroVad("onnx")


@pytest.fixture(scope="module")
def silero_torch():
    """silero-vad's TorchScript file on torch only."""
    from asr_worker.vad import SileroVad

    return SileroVad("torch")


@pytest.fixture(params=["auto", "torch", "onnx"])
def vad(request, silero, silero_torch, silero_onnx):
    """Each silero runtime (`silero` is the default, auto): every test must hold for each."""
    return {"auto": silero, "torch": silero_torch, "onnx": silero_onnx}[request.param]


def _segments(silero, pcm: np.ndarray, chunk: int = 960, config: VadConfig | None = None):
    """[(start_s, end_s, reason)] of a whole file, closed at the end as END_OF_INPUT would."""
    x = pcm.astype(np.float32) / 32768.0
    stream, ep = silero.new_stream(), Endpointer(config or VadConfig())
    out, start = [], None
    for i in range(0, len(x), chunk):
        for p in stream.process(x[i:i + chunk]):
            for ev in ep.push(float(p)):
                if ev.kind is EventKind.START:
                    start = ev.sample
                else:
                    out.append((start / 16000, ev.sample / 16000, ev.reason))
    if ep.in_speech:
        out.append((ep.segment_start / 16000, ep.flush_end(len(x)) / 16000, "end_of_input"))
    return out


def test_three_utterances_match_the_manifest(vad, shared_audio, audio_manifest):
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    assert rate == 16000
    segs = _segments(vad, pcm)
    expected = [u["segment"] for u in audio_manifest["files"]["synth/three_utterances.wav"]["utterances"]]
    assert len(segs) == 3
    for (start, end, _), (es, ee) in zip(segs, expected, strict=True):
        assert abs(start - es) <= 0.3 and abs(end - ee) <= 0.3


@pytest.mark.parametrize("name", ["binhai", "damo", "mid", "long"])
def test_each_real_recording_is_one_segment(vad, shared_audio, name):
    pcm, _ = read_wav(shared_audio / f"zh/{name}.wav")
    segs = _segments(vad, pcm)
    assert len(segs) == 1, segs


def test_chunk_size_does_not_change_the_result(vad, shared_audio):
    pcm, _ = read_wav(shared_audio / "synth/three_utterances.wav")
    a = _segments(vad, pcm, chunk=160)
    b = _segments(vad, pcm, chunk=102_400)
    assert a == b


def test_streams_do_not_share_state(vad, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    x = pcm.astype(np.float32) / 32768.0
    s1, s2 = vad.new_stream(), vad.new_stream()
    p1 = np.concatenate([s1.process(x[i:i + 512]) for i in range(0, 16000, 512)])
    s2.process(np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.3)
    s3 = vad.new_stream()
    p3 = np.concatenate([s3.process(x[i:i + 512]) for i in range(0, 16000, 512)])
    assert np.allclose(p1, p3, atol=1e-6)


def _push_all(ep: Endpointer, probs):
    events = []
    for p in probs:
        events += [(e.kind.value, e.sample // WINDOW_SAMPLES, e.reason) for e in ep.push(p)]
    return events


def test_endpointer_hysteresis_min_speech_min_silence_padding():
    cfg = VadConfig(threshold=0.5, neg_threshold=0.3, min_speech_ms=96, min_silence_ms=160,
                    short_silence_ms=160, speech_pad_ms=64)
    ep = Endpointer(cfg)
    # 2 speech windows (64 ms < 96 ms) then silence: no segment.
    assert _push_all(ep, [0.9, 0.9, 0.1, 0.1]) == []
    # Speech from window 4; 0.4 is between thresholds: neither ends speech nor breaks the candidate.
    ev = _push_all(ep, [0.9, 0.4, 0.9])
    assert ev == [("start", 2, "vad")]  # window 4 minus 64 ms of pre-roll
    # 0.4 in speech keeps the segment open; 5 windows below 0.3 (160 ms) close it.
    ev = _push_all(ep, [0.4, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert ev == [("end", 11, "vad")]  # silence began at window 9, plus 64 ms post-roll


def test_endpointer_short_segments_need_longer_silence():
    cfg = VadConfig(min_speech_ms=32, min_silence_ms=96, short_silence_ms=320, short_speech_ms=640,
                    speech_pad_ms=0)
    ep = Endpointer(cfg)
    ev = _push_all(ep, [0.9] * 5 + [0.0] * 5 + [0.9] * 30 + [0.0] * 3)
    assert ev == [("start", 0, "vad"), ("end", 40, "vad")]


def test_endpointer_max_length_reopens_while_speech_continues():
    cfg = VadConfig(min_speech_ms=32, max_segment_ms=1024, speech_pad_ms=0)
    ep = Endpointer(cfg)
    ev = _push_all(ep, [0.9] * 70)
    assert ev == [("start", 0, "vad"), ("end", 32, "max_length"), ("start", 32, "vad"),
                  ("end", 64, "max_length"), ("start", 64, "vad")]


def test_vad_config_validation():
    with pytest.raises(ValueError):
        VadConfig(threshold=1.5)
    with pytest.raises(ValueError):
        VadConfig(threshold=0.5, neg_threshold=0.7)
    with pytest.raises(ValueError):
        VadConfig(min_silence_ms=10)


def test_batched_scoring_equals_scoring_each_stream_alone(vad, shared_audio):
    """Per-stream recurrent state and context survive batching with uneven window counts."""
    files = ["zh/damo.wav", "zh/binhai.wav", "zh/mid.wav", "synth/three_utterances.wav"]
    xs = [read_wav(shared_audio / f)[0][:48_000].astype(np.float32) / 32768.0 for f in files]
    alone = [vad.new_stream().process(x) for x in xs]
    streams = [vad.new_stream() for _ in xs]
    batched = [[] for _ in xs]
    # Stream k sends (k + 1) * 1000 samples per tick (stream 3: none on odd ticks), so batches
    # mix streams with 0-8 windows each and rows change position from step to step.
    pos = [0] * len(xs)
    for tick in range(200):
        jobs, owners = [], []
        for k, (s, x) in enumerate(zip(streams, xs, strict=True)):
            if k == 3 and tick % 2:
                continue
            n = (k + 1) * 1000
            w = s.take_windows(x[pos[k]:pos[k] + n])
            pos[k] += n
            if len(w):
                jobs.append((s, w))
                owners.append(k)
        if not jobs:
            break
        for k, r in zip(owners, vad.score(jobs), strict=True):
            batched[k].append(r)
    for k, x in enumerate(xs):
        got = np.concatenate(batched[k])
        assert len(got) == len(alone[k]) == len(x) // WINDOW_SAMPLES
        np.testing.assert_allclose(got, alone[k], rtol=0, atol=1e-5, err_msg=files[k])


def test_onnx_and_torch_runtimes_give_the_same_probabilities(silero_torch, silero_onnx, shared_audio):
    x = read_wav(shared_audio / "zh/damo.wav")[0].astype(np.float32) / 32768.0
    a, b = silero_torch.new_stream().process(x), silero_onnx.new_stream().process(x)
    assert a.std() > 0.1  # real speech and silence, not a constant
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_auto_runtime_moves_streams_between_runtimes_without_losing_state(shared_audio):
    """With torch_from=3, steps of 3+ streams run on torch and smaller ones on onnxruntime;
    streams whose rows switch runtime from step to step still score as if alone."""
    from asr_worker.vad import SileroVad

    vad = SileroVad("auto", torch_from=3)
    calls = {"small": 0, "large": 0}
    small, large = vad._run_small, vad._run_large

    def count(kind, run):
        def wrapped(inp, state):
            calls[kind] += 1
            return run(inp, state)
        return wrapped

    vad._run_small, vad._run_large = count("small", small), count("large", large)
    files = ["zh/damo.wav", "zh/binhai.wav", "zh/mid.wav"]
    xs = [read_wav(shared_audio / f)[0][:32_000].astype(np.float32) / 32768.0 for f in files]
    alone = [SileroVad("onnx").new_stream().process(x) for x in xs]
    streams = [vad.new_stream() for _ in xs]
    got = [[] for _ in xs]
    for tick, at in enumerate(range(0, 32_000, 1024)):
        # Stream 2 joins every other tick: 3 rows (torch), then 2 rows (onnxruntime).
        ks = [0, 1, 2] if tick % 2 == 0 else [0, 1]
        jobs = [(streams[k], streams[k].take_windows(xs[k][at:at + 1024])) for k in ks]
        for k, r in zip(ks, vad.score(jobs), strict=True):
            got[k].append(r)
    for k in (0, 1):
        np.testing.assert_allclose(np.concatenate(got[k]), alone[k], rtol=0, atol=1e-5)
    assert calls["small"] > 0 and calls["large"] > 0


def test_onnx_runtime_alone_does_not_import_torch():
    """A front that runs the ONNX VAD alone need not load torch (memory, start-up time)."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parents[2] / "worker-py"
    code = ("import sys; from asr_worker.vad import SileroVad; v = SileroVad('onnx'); "
            "import numpy as np; v.new_stream().process(np.zeros(1024, np.float32)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=worker, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_unknown_silero_runtime_is_a_startup_error():
    from asr_worker.errors import StartupError
    from asr_worker.vad import SileroVad

    with pytest.raises(StartupError, match="unknown silero runtime"):
        SileroVad("tensorflow")


async def test_vad_batcher_serves_concurrent_streams_like_inline(vad, shared_audio):
    """Streams of any chunk size, batched per tick, get exactly their one-stream-alone scores."""
    import asyncio

    from asr_worker.vad import VadBatcher

    x = read_wav(shared_audio / "zh/damo.wav")[0].astype(np.float32) / 32768.0
    expected = vad.new_stream().process(x)
    batcher = VadBatcher(vad, max_steps=4, tick_s=0.005)
    batcher.start()

    async def one(chunk):
        s = vad.new_stream()
        parts = [await batcher.score(s, x[i:i + chunk]) for i in range(0, len(x), chunk)]
        return np.concatenate(parts)

    try:
        results = await asyncio.gather(*(one(c) for c in (960, 1920, 16_000, len(x))))
    finally:
        await batcher.stop()
    for r in results:
        assert np.allclose(r, expected, atol=1e-5)
    assert max(batcher.batch_sizes) > 1


class _Client:
    """A VadClient that records the probabilities it is given (a session stand-in)."""

    def __init__(self, vad):
        self.vad_stream = vad.new_stream()
        self.probs: list[float] = []

    @property
    def n(self) -> int:
        return len(self.probs)

    def vad_scored(self, probs):
        self.probs.extend(probs.tolist())

    def vad_failed(self, exc):
        raise AssertionError(exc)


async def test_vad_batcher_holds_a_tick_so_paced_streams_share_calls(vad):
    """Streams pushing at different moments within one tick are scored in ONE call."""
    import asyncio

    from asr_worker.vad import VadBatcher

    batcher = VadBatcher(vad, tick_s=0.2)
    batcher.start()
    clients = [_Client(vad) for _ in range(5)]
    rng = np.random.default_rng(0)
    try:
        for c in clients:
            batcher.push(c, c.vad_stream.take_windows(rng.normal(0, 0.1, 1024).astype(np.float32)))
            await asyncio.sleep(0.01)
        assert all(c.probs == [] for c in clients)  # held for the tick
        await asyncio.sleep(0.3)
    finally:
        await batcher.stop()
    assert [len(c.probs) for c in clients] == [2] * 5
    assert list(batcher.batch_sizes) == [5]


async def test_vad_batcher_scores_a_full_batch_without_waiting_for_the_tick(vad):
    from asr_worker.vad import VadBatcher

    batcher = VadBatcher(vad, tick_s=10.0, full_batch=3)
    batcher.start()
    clients = [_Client(vad) for _ in range(4)]
    try:
        for c in clients:
            batcher.push(c, np.zeros((1, 512), dtype=np.float32))
        # The third push filled the batch: scored at once; the fourth waits for its tick.
        assert [c.n for c in clients] == [1, 1, 1, 0]
        assert list(batcher.batch_sizes) == [3]
    finally:
        await batcher.stop()


async def test_vad_batcher_settle_scores_one_client_at_once_and_backlogs_do_not_wait(vad):
    import asyncio

    from asr_worker.vad import VadBatcher

    batcher = VadBatcher(vad, tick_s=10.0, max_steps=8)
    batcher.start()
    a, b = _Client(vad), _Client(vad)
    try:
        batcher.push(a, np.zeros((3, 512), dtype=np.float32))
        batcher.push(b, np.zeros((2, 512), dtype=np.float32))
        batcher.settle(a)
        assert (a.n, b.n) == (3, 0) and batcher.backlog(b) == 2
        batcher.forget(b)
        assert batcher.backlog(b) == 0
        # A backlog beyond max_steps is scored call after call, not one call per tick.
        fast = VadBatcher(vad, tick_s=0.0, max_steps=8)
        fast.start()
        batcher_client = _Client(vad)
        fast.push(batcher_client, np.zeros((40, 512), dtype=np.float32))
        for _ in range(50):
            await asyncio.sleep(0)
        assert batcher_client.n == 40 and list(fast.batch_sizes) == [1] * 5
        await fast.stop()
    finally:
        await batcher.stop()


@pytest.mark.parametrize(("flag", "runtime"),
                         [("silero", "auto"), ("silero-torch", "torch"), ("silero-onnx", "onnx")])
def test_vad_flag_picks_the_silero_runtime(flag, runtime):
    """`serve --vad` as parsed and built by the CLI (every front builds its VAD this way)."""
    from asr_worker.cli import build_parser, build_vad, check_serve_args

    args = build_parser().parse_args(["serve", "--engine", "fake", "--vad", flag])
    check_serve_args(args)
    vad = build_vad(args)
    assert (vad.runtime, vad.name) == (runtime, flag)


def test_unknown_vad_flag_is_a_startup_error_naming_the_choices():
    from asr_worker.cli import build_parser, check_serve_args
    from asr_worker.errors import StartupError

    args = build_parser().parse_args(["serve", "--engine", "fake", "--vad", "webrtc"])
    with pytest.raises(StartupError, match="silero, silero-torch, silero-onnx, fsmn"):
        check_serve_args(args)


def test_loading_silero_keeps_the_process_torch_thread_count():
    """silero_vad's import sets torch to 1 thread; the engine's --torch-threads must survive it."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parents[2] / "worker-py"
    code = ("import torch; torch.set_num_threads(2); from asr_worker.vad import SileroVad; "
            "SileroVad('auto'); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=worker, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2", out.stderr
