"""What a session asks of the engine for partials: the agreed prefix, and early first partials."""

from __future__ import annotations

import pytest
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc
from asr_worker.engine.fake import FakeEngine

pytestmark = pytest.mark.timeout(60)


class RecordingEngine(FakeEngine):
    """The fake engine, keeping (kind, prefix, samples) of every request it decodes."""

    def __init__(self) -> None:
        super().__init__(base_ms=1, per_item_ms=0)
        self.seen: list[tuple[str, str, int]] = []

    def decode_batch(self, requests):
        self.seen.extend((r.kind, r.prefix, len(r.audio)) for r in requests)
        return super().decode_batch(requests)


async def test_partials_force_the_emitted_text_and_finals_decode_afresh(silero, shared_audio):
    import grpc

    engine = RecordingEngine()
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(mode=asr_pb2.RECOGNITION_MODE_TWO_PASS, sample_rate_hz=rate)
    async with start_worker(silero, engine=engine) as w, grpc.aio.insecure_channel(w.address) as ch:
        engine.seen.clear()  # warmup
        responses = await collect(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(
            iter(requests_for(pcm.tobytes(), config=cfg))))
    finals = [r.final.text for r in responses if r.HasField("final")]
    emitted = ["".join(r.partial.delta for r in responses
                       if r.HasField("partial") and r.partial.segment_id == i) for i in range(3)]
    assert all(prefix == "" for kind, prefix, _ in engine.seen if kind == "final")
    prefixes = [prefix for kind, prefix, _ in engine.seen if kind == "partial" and prefix]
    assert prefixes, "later partials carry the agreed text"
    # Each forced prefix is text the client already has: a prefix of what its segment emitted.
    for p in prefixes:
        assert any(e.startswith(p) for e in emitted), (p, emitted)
    assert all(f.startswith(e) for f, e in zip(finals, emitted, strict=True))


async def test_first_partial_is_due_when_the_segment_opens(silero, shared_audio):
    """The opening partial decodes only what the VAD needed to open the segment (< 600 ms)."""
    import grpc

    engine = RecordingEngine()
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(mode=asr_pb2.RECOGNITION_MODE_TWO_PASS, sample_rate_hz=rate,
                                  partial_interval_ms=600)
    async with start_worker(silero, engine=engine) as w, grpc.aio.insecure_channel(w.address) as ch:
        engine.seen.clear()
        responses = await collect(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(
            iter(requests_for(pcm.tobytes(), config=cfg))))
    partial_lengths = [n for kind, _, n in engine.seen if kind == "partial"]
    assert partial_lengths and partial_lengths[0] < 600 * 16
    # Every segment's first partial response arrives before 600 ms of its audio was decoded.
    first_end: dict[int, int] = {}
    starts = {r.speech_event.segment_id: r.speech_event.offset_ms for r in responses
              if r.HasField("speech_event") and r.speech_event.type == asr_pb2.SPEECH_EVENT_TYPE_START}
    for r in responses:
        if r.HasField("partial"):
            first_end.setdefault(r.partial.segment_id, r.partial.audio_end_ms)
    assert first_end and all(first_end[s] - starts[s] < 600 for s in first_end), (first_end, starts)
