"""Whole sessions over gRPC against the fake engine: segments, partial deltas, finals, acks."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(60)


def _kinds(responses):
    return [r.WhichOneof("streaming_response") for r in responses]


def _check_ordering(responses):
    """Per segment: START, partials, END, one final; partial deltas never revise."""
    open_seg = None
    finals = []
    emitted: dict[int, str] = {}
    for r in responses:
        kind = r.WhichOneof("streaming_response")
        if kind == "speech_event":
            ev = r.speech_event
            if ev.type == asr_pb2.SPEECH_EVENT_TYPE_START:
                assert open_seg is None
                open_seg = ev.segment_id
            else:
                assert ev.segment_id == open_seg
                open_seg = None
        elif kind == "partial":
            p = r.partial
            assert p.segment_id == open_seg, "partial outside its open segment"
            assert p.segment_id not in [f.segment_id for f in finals], "partial after its final"
            before = emitted.get(p.segment_id, "")
            emitted[p.segment_id] = before + p.delta
            # Deltas concatenated stay a prefix of the newest hypothesis: never revised.
            assert p.text.startswith(emitted[p.segment_id])
        elif kind == "final":
            assert open_seg is None, "final before SPEECH_END"
            assert r.final.segment_id not in [f.segment_id for f in finals], "two finals"
            finals.append(r.final)
    return finals, emitted


async def test_three_utterances_two_pass_partials_and_finals(stub, worker, shared_audio, audio_manifest):
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(session_id="s1", mode=asr_pb2.RECOGNITION_MODE_TWO_PASS,
                                  sample_rate_hz=rate)
    responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg))))
    finals, emitted = _check_ordering(responses)
    assert [f.segment_id for f in finals] == [0, 1, 2]
    expected = audio_manifest["files"]["synth/three_utterances.wav"]["utterances"]
    for f, utt in zip(finals, expected, strict=True):
        assert abs(f.start_ms - utt["segment"][0] * 1000) <= 300
        assert abs(f.end_ms - utt["segment"][1] * 1000) <= 300
        assert f.text, "voiced audio gives text"
        # The final's text extends everything the deltas emitted (fake engine is prefix-stable).
        assert f.text.startswith(emitted.get(f.segment_id, ""))
        assert f.tokens and f.tokens[0].start_ms >= f.start_ms
    assert sum(1 for r in responses if r.HasField("partial")) >= 6
    assert any(r.partial.delta for r in responses if r.HasField("partial"))
    assert _kinds(responses)[-1] == "end_of_input"
    ack = responses[-1].end_of_input
    assert ack.finalized_segments == 3
    assert abs(ack.audio_received_ms - len(pcm) * 1000 / rate) <= 1
    assert [f.reason for f in finals] == [asr_pb2.ENDPOINT_REASON_VAD] * 2 + [
        asr_pb2.ENDPOINT_REASON_END_OF_INPUT]


async def test_offline_mode_has_no_partials(stub, shared_audio):
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(mode=asr_pb2.RECOGNITION_MODE_OFFLINE, sample_rate_hz=rate)
    responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg,
                                                                         chunk_bytes=204_800))))
    assert "partial" not in _kinds(responses)
    assert sum(1 for r in responses if r.HasField("final")) == 3


async def test_big_chunks_lose_no_vad_event(stub, shared_audio):
    """One chunk holding several segment boundaries still yields every segment."""
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate)
    responses = await collect(stub.StreamingRecognize(iter(
        requests_for(pcm.tobytes(), config=cfg, chunk_bytes=len(pcm.tobytes())))))
    finals, _ = _check_ordering(responses)
    assert [f.segment_id for f in finals] == [0, 1, 2]


async def test_end_of_input_without_speech_gives_one_empty_final_then_ack(stub):
    silence = np.zeros(16000, dtype="<i2").tobytes()
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=16000)
    responses = await collect(stub.StreamingRecognize(iter(requests_for(silence, config=cfg))))
    assert _kinds(responses) == ["final", "end_of_input"]
    f = responses[0].final
    assert f.text == "" and f.segment_id == 0 and f.reason == asr_pb2.ENDPOINT_REASON_END_OF_INPUT
    assert responses[1].end_of_input.finalized_segments == 1


async def test_end_of_input_with_no_audio_at_all(stub):
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=16000)
    responses = await collect(stub.StreamingRecognize(iter(requests_for(b"", config=cfg))))
    assert _kinds(responses) == ["final", "end_of_input"]
    assert responses[0].final.text == ""


async def test_eight_khz_input(stub, shared_audio):
    pcm, _rate = read_wav(shared_audio / "synth/three_utterances.wav")
    pcm8 = pcm[::2].copy()  # crude decimation is fine for VAD
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=8000)
    responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm8.tobytes(), config=cfg,
                                                                        chunk_bytes=960))))
    finals, _ = _check_ordering(responses)
    assert [f.segment_id for f in finals] == [0, 1, 2]
    assert abs(finals[1].start_ms - 8340) <= 400
    assert abs(responses[-1].end_of_input.audio_received_ms - len(pcm8) / 8) <= 1


async def test_resume_offsets_and_segment_ids(stub, shared_audio):
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(
        sample_rate_hz=rate,
        resume=asr_pb2.ResumeState(audio_offset_ms=60_000, finalized_segments=7))
    responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg,
                                                                        chunk_bytes=32_000))))
    finals, _ = _check_ordering(responses)
    assert [f.segment_id for f in finals] == [7, 8, 9]
    assert abs(finals[0].start_ms - 60_500) <= 300
    assert responses[-1].end_of_input.finalized_segments == 10
    assert abs(responses[-1].end_of_input.audio_received_ms - (60_000 + len(pcm) / 16)) <= 1


async def test_two_rounds_with_config_between(stub, shared_audio):
    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS)
    reqs = requests_for(pcm.tobytes(), config=cfg, chunk_bytes=9600)
    cfg2 = asr_pb2.StreamingConfig(sample_rate_hz=8000, mode=asr_pb2.RECOGNITION_MODE_OFFLINE)
    reqs += requests_for(pcm[::2].copy().tobytes(), config=cfg2, chunk_bytes=4800)
    responses = await collect(stub.StreamingRecognize(iter(reqs)))
    finals = [r.final for r in responses if r.HasField("final")]
    acks = [r.end_of_input for r in responses if r.HasField("end_of_input")]
    assert [f.segment_id for f in finals] == [0, 1]
    assert [a.finalized_segments for a in acks] == [1, 2]
    # The second round continues the session timeline.
    assert finals[1].start_ms > finals[0].end_ms
    assert abs(acks[1].audio_received_ms - 2 * len(pcm) / 16) <= 2
    # Round two is offline: no partial after the first ack.
    first_ack = _kinds(responses).index("end_of_input")
    assert "partial" not in _kinds(responses)[first_ack:]


async def test_commit_forces_an_endpoint(stub, shared_audio):
    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    half = len(pcm) // 2
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate)
    reqs = requests_for(pcm[:half].tobytes(), config=cfg, end_of_input=False)
    reqs.append(asr_pb2.StreamingRecognizeRequest(
        control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_COMMIT)))
    reqs += requests_for(pcm[half:].tobytes(), config=cfg)[1:]
    responses = await collect(stub.StreamingRecognize(iter(reqs)))
    finals, _ = _check_ordering(responses)
    assert [f.reason for f in finals] == [asr_pb2.ENDPOINT_REASON_COMMIT,
                                          asr_pb2.ENDPOINT_REASON_END_OF_INPUT]
    assert finals[0].end_ms == pytest.approx(half / 16, abs=2)


async def test_half_close_finalizes_open_segment(stub, shared_audio):
    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate)
    responses = await collect(stub.StreamingRecognize(iter(
        requests_for(pcm.tobytes(), config=cfg, end_of_input=False))))
    finals, _ = _check_ordering(responses)
    assert len(finals) == 1 and finals[0].reason == asr_pb2.ENDPOINT_REASON_END_OF_INPUT
    assert "end_of_input" not in _kinds(responses)


async def test_max_length_cap_force_closes(silero, shared_audio):
    """Continuous speech longer than the cap is cut with reason MAX_LENGTH, nothing lost."""
    import grpc
    from worker_testkit import start_worker

    from asr.v1 import asr_pb2_grpc
    from asr_worker.session import SessionOptions
    from asr_worker.vad import VadConfig

    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    opts = SessionOptions(vad=VadConfig(max_segment_ms=2000))
    async with start_worker(silero, session=opts) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate)
        responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg))))
    finals, _ = _check_ordering(responses)
    assert len(finals) >= 2
    assert finals[0].reason == asr_pb2.ENDPOINT_REASON_MAX_LENGTH
    assert 2000 <= finals[0].end_ms - finals[0].start_ms <= 2000 + 32  # one VAD window
    assert finals[1].start_ms == finals[0].end_ms  # reopened at once: no audio lost


async def test_paced_stream_gets_partials_on_cadence(stub, shared_audio):
    """At 4x real time with 60 ms chunks, partials arrive every ~600 ms of audio."""
    import asyncio
    import time

    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate, partial_interval_ms=600)
    reqs = requests_for(pcm.tobytes(), config=cfg, chunk_bytes=1920)
    call = stub.StreamingRecognize()
    got: list[tuple[float, asr_pb2.StreamingRecognizeResponse]] = []
    t0 = time.monotonic()

    async def reader():
        async for r in call:
            got.append((time.monotonic() - t0, r))

    task = asyncio.create_task(reader())
    for i, req in enumerate(reqs):
        await call.write(req)
        if req.HasField("audio"):
            await asyncio.sleep(max(0.0, t0 + (i * 0.060) / 4 - time.monotonic()))
    await call.done_writing()
    await task
    starts = [r.speech_event.offset_ms for _, r in got
              if r.HasField("speech_event") and r.speech_event.type == asr_pb2.SPEECH_EVENT_TYPE_START]
    ends = [r.partial.audio_end_ms for _, r in got if r.HasField("partial")]
    assert len(starts) == 1 and len(ends) >= 6
    assert ends[0] - starts[0] <= 700  # first partial after ~600 ms of segment audio
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    assert max(gaps) <= 1300 and sum(gaps) / len(gaps) <= 700


async def test_window_limited_partials_never_revise(silero, shared_audio):
    import grpc
    from worker_testkit import start_worker

    from asr.v1 import asr_pb2_grpc
    from asr_worker.session import SessionOptions

    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    opts = SessionOptions(partial_window_ms=2000)
    async with start_worker(silero, session=opts) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        cfg = asr_pb2.StreamingConfig(sample_rate_hz=rate)
        responses = await collect(stub.StreamingRecognize(iter(requests_for(pcm.tobytes(), config=cfg,
                                                                            chunk_bytes=3840))))
    finals, emitted = _check_ordering(responses)
    assert [f.segment_id for f in finals] == [0, 1, 2]
    for f in finals:
        assert f.text.startswith(emitted.get(f.segment_id, ""))


async def test_many_concurrent_streams_each_get_all_their_finals(silero, shared_audio):
    import asyncio

    import grpc
    from worker_testkit import start_worker

    from asr.v1 import asr_pb2_grpc

    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    async with start_worker(silero, max_streams=12, max_batch_size=8) as w, \
            grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)

        async def one(i):
            cfg = asr_pb2.StreamingConfig(session_id=f"c{i}", sample_rate_hz=rate)
            responses = await collect(stub.StreamingRecognize(iter(
                requests_for(pcm.tobytes(), config=cfg, chunk_bytes=6400 + 320 * i))))
            finals, _ = _check_ordering(responses)
            return [f.text for f in finals]

        texts = await asyncio.gather(*(one(i) for i in range(12)))
        assert max(w.scheduler.batch_sizes) > 1
    assert all(len(t) == 3 for t in texts)
    assert all(t == texts[0] for t in texts)  # same audio, same finals, whatever the chunking


async def test_partial_still_running_at_segment_close_is_dropped(silero, shared_audio):
    """A partial whose result arrives after its segment closed is never sent (no partial after final)."""
    import asyncio
    import threading

    from asr_worker.engine.fake import FakeEngine

    release = threading.Event()
    started = threading.Event()

    class SlowPartials(FakeEngine):
        def decode_batch(self, requests):
            if any(r.kind == "partial" for r in requests):
                started.set()
                release.wait(10)
            return super().decode_batch(requests)

    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    async with start_worker(silero, engine=SlowPartials(0, 0), batch_window_ms=0) as w, \
            grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        call = stub.StreamingRecognize()
        await call.write(asr_pb2.StreamingRecognizeRequest(config=asr_pb2.StreamingConfig(
            sample_rate_hz=rate, partial_interval_ms=480)))
        pos = 0
        while not started.is_set() and pos < len(pcm):
            await call.write(asr_pb2.StreamingRecognizeRequest(
                audio=asr_pb2.AudioChunk(pcm16le=pcm[pos:pos + 960].tobytes())))
            pos += 960
            await asyncio.sleep(0.002)
        assert started.is_set()
        # More audio while the partial runs: the next partial is deferred, not stacked up.
        for _ in range(40):
            await call.write(asr_pb2.StreamingRecognizeRequest(
                audio=asr_pb2.AudioChunk(pcm16le=pcm[pos:pos + 960].tobytes())))
            pos += 960
        await call.write(asr_pb2.StreamingRecognizeRequest(
            control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_COMMIT)))
        await asyncio.sleep(0.2)
        release.set()
        await call.write(asr_pb2.StreamingRecognizeRequest(
            control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT)))
        await call.done_writing()
        responses = [r async for r in call]
    finals, _ = _check_ordering(responses)
    assert [f.reason for f in finals] == [asr_pb2.ENDPOINT_REASON_COMMIT]
    assert not any(r.HasField("partial") for r in responses)  # the only partial came too late
    assert responses[-1].HasField("end_of_input")
