"""Worker metrics across processes: real child processes record through the real observed
code (Scheduler driving a metered engine, VadBatcher with silero on real speech, the tiny
Fun-ASR-Nano's decoder counters), and one scrape of the parent's /metrics, over a real
socket and read with prometheus_client's own text parser, carries every process's values.

prometheus_client picks its value storage when first imported, so everything that records
runs in fresh (spawned) processes started after MetricsDir exported the directory; this
test process only serves and parses.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asr_worker.metrics import MULTIPROC_ENV, MetricsDir, serve_metrics

DONE_TIMEOUT_S = 120


def _engine_child(model_dir: str, done, stop) -> None:
    """An "engine" process: the Scheduler drives the tiny Fun-ASR-Nano through metered_engine."""
    from asr_worker.engine.base import DecodeOptions, DecodeRequest, SegmentRef
    from asr_worker.metrics import WorkerMetrics, metered_engine
    from asr_worker.models.loader import load_engine
    from asr_worker.scheduler import Scheduler

    metrics = WorkerMetrics("engine")
    tiny = load_engine(Path(model_dir), "cpu", max_new_tokens=8, partial_max_new_tokens=4)
    engine = metered_engine(tiny, metrics)

    async def run() -> None:
        sched = Scheduler(engine, max_batch_size=4, batch_window_ms=5)
        await sched.start()
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
        tickets = [sched.submit(DecodeRequest(audio, DecodeOptions(), kind=k), stream_key=i)
                   for i, k in enumerate(["final", "partial", "final"])]
        await asyncio.gather(*(t.future for t in tickets))
        # A partial and then the final of one segment: the final is drafted from the partial.
        for kind in ("partial", "final"):
            req = DecodeRequest(audio, DecodeOptions(), kind=kind, segment=SegmentRef(9, 0))
            await sched.submit(req, stream_key=9).future
        metrics.sample(streams=3, queued=sched.queue_length, running=0, engine=engine, device="cpu")
        await sched.stop()

    asyncio.run(run())
    done.set()
    stop.wait(DONE_TIMEOUT_S)


def _front_child(wav: str, done, stop) -> None:
    """A "front" process: VadBatcher scores real speech with silero, in 60 ms chunks."""
    import soundfile as sf

    from asr_worker.metrics import WorkerMetrics
    from asr_worker.vad import SileroVad, VadBatcher

    metrics = WorkerMetrics("front")
    samples, rate = sf.read(wav, dtype="float32")
    assert rate == 16000

    async def run() -> None:
        vad = SileroVad()
        batcher = VadBatcher(vad, tick_s=0.005, observer=metrics)
        batcher.start()
        streams = [vad.new_stream(), vad.new_stream()]
        for off in range(0, len(samples), 960):
            await asyncio.gather(*(batcher.score(s, samples[off:off + 960]) for s in streams))
        await batcher.stop()
        metrics.sample(streams=2)

    asyncio.run(run())
    done.set()
    stop.wait(DONE_TIMEOUT_S)


@pytest.fixture
def metrics_dir():
    assert MULTIPROC_ENV not in os.environ
    d = MetricsDir()
    try:
        yield d
    finally:
        d.close()
    assert MULTIPROC_ENV not in os.environ and not os.path.exists(d.path)


def _wait_done(done, proc) -> None:
    """Waits for a child's `done`, failing at once (with its exit code) if it died instead."""
    for _ in range(DONE_TIMEOUT_S * 10):
        if done.wait(0.1):
            return
        if proc.exitcode is not None:
            pytest.fail(f"{proc.name} exited {proc.exitcode} before recording (its traceback is above)")
    pytest.fail(f"{proc.name} did not finish in {DONE_TIMEOUT_S}s")


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(families: dict[str, list], sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    return sum(s.value for s in families.get(family, [])
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.timeout(300)
def test_one_scrape_carries_every_processes_values_and_drops_a_dead_ones_gauges(
    metrics_dir, tiny_model_dir: Path, shared_audio: Path
) -> None:
    wav = shared_audio / "zh" / "damo.wav"
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    engine_done, front_done = ctx.Event(), ctx.Event()
    engine = ctx.Process(target=_engine_child, args=(str(tiny_model_dir), engine_done, stop))
    front = ctx.Process(target=_front_child, args=(str(wav), front_done, stop))
    server, port = serve_metrics(metrics_dir.path, "127.0.0.1", 0)
    try:
        engine.start()
        front.start()
        _wait_done(engine_done, engine)
        _wait_done(front_done, front)
        m = _scrape(port)

        # One live series per process, each with its own pid.
        procs = {(s.labels["role"], s.labels["pid"]) for s in m["asr_worker_processes"] if s.value == 1}
        assert procs == {("engine", str(engine.pid)), ("front", str(front.pid))}
        # Live gauges sum over processes; counters and histograms add up.
        assert _value(m, "asr_worker_streams") == 5
        assert _value(m, "asr_worker_queue_depth") == 0
        # Front: every sample of both streams counted, and the VAD batches timed.
        import soundfile as sf

        seconds = sf.info(str(wav)).frames / 16000
        assert _value(m, "asr_worker_audio_seconds_total") == pytest.approx(2 * seconds)
        windows = _value(m, "asr_worker_vad_windows_total")
        assert windows == 2 * (sf.info(str(wav)).frames // 512)
        assert _value(m, "asr_worker_vad_seconds_count") >= 1
        # Engine: three requests went through engine calls whose sizes and times are recorded.
        calls = _value(m, "asr_worker_batch_size_count")
        assert calls >= 1 and _value(m, "asr_worker_engine_seconds_count") == calls
        kinds = {s.labels["kind"] for s in m["asr_worker_engine_seconds"] if s.name.endswith("_count")}
        assert kinds <= {"final", "partial", "mixed"} and kinds
        # The engine's own decoder counters, caught up by sample().
        assert _value(m, "asr_worker_decoder_generated_tokens_total", kind="final") > 0
        assert _value(m, "asr_worker_decoder_prefilled_tokens_total", kind="partial") > 0
        assert _value(m, "asr_worker_decoder_draft_proposed_tokens_total", kind="final") > 0
        assert _value(m, "asr_worker_decoder_draft_accepted_tokens_total", kind="final") > 0
        # CPU engine: no CUDA memory series.
        assert not [s for s in m.get("asr_worker_gpu_memory_bytes", []) if s.value]

        # A process that exits leaves the live gauges once marked dead; its counters stay.
        stop.set()
        front.join(30)
        metrics_dir.mark_dead(front.pid)
        after = _scrape(port)
        procs = {(s.labels["role"], s.labels["pid"]) for s in after["asr_worker_processes"] if s.value == 1}
        assert procs == {("engine", str(engine.pid))}
        assert _value(after, "asr_worker_streams") == 3
        assert _value(after, "asr_worker_audio_seconds_total") == pytest.approx(2 * seconds)
    finally:
        stop.set()
        for p in (engine, front):
            p.join(30)
            if p.is_alive():
                p.kill()
        server.shutdown()


def test_metrics_refuse_to_start_without_the_multiprocess_directory() -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: values
    # recorded here would never reach a scrape, so WorkerMetrics says so instead.
    from asr_worker.metrics import WorkerMetrics

    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        WorkerMetrics("worker")
