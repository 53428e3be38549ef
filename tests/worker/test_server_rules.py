"""Contract rules of the Asr service: validation, admission, cancellation, health, load, drain."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(60)

CFG16 = asr_pb2.StreamingConfig(session_id="t", sample_rate_hz=16000)


def _audio(pcm: bytes, rate: int = 0):
    return asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=pcm, sample_rate_hz=rate))


def _control(t):
    return asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=t))


def _config(cfg=CFG16):
    return asr_pb2.StreamingRecognizeRequest(config=cfg)


async def _status_of(stub, requests) -> tuple[grpc.StatusCode, str, list]:
    call = stub.StreamingRecognize(iter(requests))
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for r in call:
            got.append(r)
    return info.value.code(), info.value.details(), got


@pytest.mark.parametrize(
    ("requests", "needle"),
    [
        ([_audio(b"\0\0")], "first request must carry config"),
        ([_control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)], "first request must carry config"),
        ([asr_pb2.StreamingRecognizeRequest()], "first request must carry config"),
        ([_config(asr_pb2.StreamingConfig(sample_rate_hz=44100))], "sample_rate_hz must be 8000 or 16000"),
        ([_config(asr_pb2.StreamingConfig())], "sample_rate_hz must be 8000 or 16000"),
        ([_config(), _audio(b"\0\0\0")], "odd byte count"),
        ([_config(), _audio(b"\0\0", rate=8000)], "differs from config.sample_rate_hz"),
        ([_config(), _control(asr_pb2.CONTROL_TYPE_UNSPECIFIED)], "control.type"),
        ([_config(), _audio(b"\0\0" * 100), _config()], "config is allowed only"),
        ([_config(), _config()], "config is allowed only"),
        ([_config(asr_pb2.StreamingConfig(sample_rate_hz=16000, hotwords=[
            asr_pb2.Hotword(phrase="x" * 65)]))], "at most 64"),
        ([_config(asr_pb2.StreamingConfig(sample_rate_hz=16000, hotwords=[
            asr_pb2.Hotword(phrase=f"w{i}") for i in range(257)]))], "at most 256"),
    ],
)
async def test_invalid_requests_end_with_invalid_argument(stub, worker, requests, needle):
    code, details, _ = await _status_of(stub, requests)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in details
    for _ in range(50):
        if worker.service.active_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert worker.service.active_streams == 0


async def test_config_allowed_directly_after_end_of_input(stub):
    reqs = [_config(), _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT), _config(), _audio(b"\0\0" * 160),
            _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)]
    responses = await collect(stub.StreamingRecognize(iter(reqs)))
    assert [r.WhichOneof("streaming_response") for r in responses] == [
        "final", "end_of_input", "final", "end_of_input"]
    assert [r.final.segment_id for r in responses if r.HasField("final")] == [0, 1]


async def test_cancelled_stream_frees_its_session_and_work(worker, stub, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    call = stub.StreamingRecognize()
    await call.write(_config())
    for i in range(0, len(pcm) * 2, 3200):
        await call.write(_audio(pcm.tobytes()[i:i + 3200]))
    # Wait until the session exists and has produced something.
    first = await call.read()
    assert first.HasField("speech_event")
    assert worker.service.active_streams == 1
    call.cancel()
    for _ in range(100):
        if worker.service.active_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert worker.service.active_streams == 0
    assert worker.scheduler.queue_length == 0


async def test_max_streams_gives_resource_exhausted(silero):
    async with start_worker(silero, max_streams=2) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        calls = [stub.StreamingRecognize() for _ in range(2)]
        for c in calls:
            await c.write(_config())
        for _ in range(100):
            if w.service.active_streams == 2:
                break
            await asyncio.sleep(0.01)
        assert not w.service.accepting
        code, details, _ = await _status_of(stub, [_config()])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in details
        for c in calls:
            await c.done_writing()
            assert [r async for r in c] == []
        assert w.service.active_streams == 0 and w.service.accepting


async def test_health_not_serving_until_warm_then_serving(silero):
    async with start_worker(silero, ready=False) as w, grpc.aio.insecure_channel(w.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "asr.v1.Asr"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, _details, _ = await _status_of(asr_pb2_grpc.AsrStub(ch), [_config()])
        assert code == grpc.StatusCode.UNAVAILABLE
        await w.scheduler.warmup()
        await w.mark_ready()
        for name in ("", "asr.v1.Asr"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_watch_load_reports_at_once_and_on_change(worker, stub):
    watch = stub.WatchLoad(asr_pb2.WatchLoadRequest(interval_ms=60_000))
    first = await asyncio.wait_for(watch.read(), 2)
    assert first.worker_id == "test-worker" and first.engine == "fake"
    assert first.accepting and first.active_streams == 0 and first.max_streams == 16
    worker.service.start_draining()  # an admission change: reported without waiting 60 s
    second = await asyncio.wait_for(watch.read(), 2)
    assert not second.accepting
    watch.cancel()


async def test_watch_load_interval_and_queue_metrics(worker, stub, shared_audio):
    watch = stub.WatchLoad(asr_pb2.WatchLoadRequest(interval_ms=100))
    reports = [await asyncio.wait_for(watch.read(), 2) for _ in range(3)]
    assert len(reports) == 3
    watch.cancel()
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=CFG16))))
    report = worker.service.load_report()
    assert report.recent_rtf > 0
    assert report.queued_audio_seconds == 0


async def test_inference_failure_is_an_in_band_error_for_that_segment(silero, shared_audio):
    from asr_worker.engine.fake import FakeEngine

    class Failing(FakeEngine):
        def decode_batch(self, requests):
            if self.warmed_up and any(r.kind == "final" for r in requests):
                raise RuntimeError("device lost")
            return super().decode_batch(requests)

    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    async with start_worker(silero, engine=Failing(0, 0)) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=CFG16))))
    errors = [r.error for r in responses if r.HasField("error")]
    assert len(errors) == 1
    assert errors[0].code == asr_pb2.ERROR_CODE_INFERENCE_FAILED and errors[0].retryable
    assert errors[0].segment_id == 0 and "device lost" in errors[0].message
    assert responses[-1].HasField("end_of_input")


async def test_drain_refuses_new_streams_lets_open_ones_finish_then_ends_them(silero, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    async with start_worker(silero) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        finishing = stub.StreamingRecognize()
        lingering = stub.StreamingRecognize()
        for c in (finishing, lingering):
            await c.write(_config())
            await c.write(_audio(pcm.tobytes()[:32000]))
        for _ in range(100):
            if w.service.active_streams == 2:
                break
            await asyncio.sleep(0.01)
        drain = asyncio.create_task(w.server.drain(1.0))
        await asyncio.sleep(0.1)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="asr.v1.Asr"))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, details, _ = await _status_of(stub, [_config()])
        assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details
        # A stream that ends within the grace period completes normally.
        await finishing.write(_control(asr_pb2.CONTROL_TYPE_END_OF_INPUT))
        await finishing.done_writing()
        got = [r async for r in finishing]
        assert got[-1].HasField("end_of_input")
        assert await finishing.code() == grpc.StatusCode.OK
        # One that does not is ended with UNAVAILABLE (retryable) after the grace period.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in lingering:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.wait_for(drain, 10)
        assert w.service.active_streams == 0


async def test_full_inference_queue_ends_the_call_with_resource_exhausted(silero, shared_audio):
    """A final that cannot be queued ends the call with a retryable status (the gateway replays)."""
    from asr_worker.engine.fake import FakeEngine

    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate, mode=asr_pb2.RECOGNITION_MODE_OFFLINE)
    async with start_worker(silero, engine=FakeEngine(base_ms=400, per_item_ms=0), max_batch_size=1,
                            batch_window_ms=0, max_queue=1) as w, \
            grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)

        async def one():
            call = stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg,
                                                             chunk_bytes=64_000)))
            try:
                await collect(call)
                return grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details()

        results = await asyncio.gather(*(one() for _ in range(3)))
    refused = [d for c, d in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused and all("queue full" in d for d in refused)
    assert all(c in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED) for c, _ in results)
