"""The production engine path end to end: a tiny random-weight Fun-ASR-Nano behind the gRPC server."""

from __future__ import annotations

import grpc
import pytest
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from asr_worker.models.loader import load_engine

    return load_engine(tiny_model_dir, "cpu")


async def test_two_pass_stream_on_the_tiny_model(silero, tiny_engine, shared_audio):
    pcm, rate = read_wav(shared_audio / "zh/damo.wav")
    async with start_worker(silero, engine=tiny_engine) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        cfg = asr_pb2.StreamingConfig(
            sample_rate_hz=rate, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS, language="zh", itn=False,
            hotwords=[asr_pb2.Hotword(phrase="达摩院", weight=20)])
        responses = await collect(stub.StreamingRecognize(iter(
            requests_for(pcm.tobytes(), config=cfg, chunk_bytes=16_000))))
        report = w.service.load_report()
    work = tiny_engine.work
    kinds = [r.WhichOneof("streaming_response") for r in responses]
    assert "error" not in kinds
    finals = [r.final for r in responses if r.HasField("final")]
    assert [f.segment_id for f in finals] == [0]
    assert finals[0].reason == asr_pb2.ENDPOINT_REASON_END_OF_INPUT
    assert kinds[-1] == "end_of_input"
    assert report.engine == "funasr-nano" and report.recent_rtf > 0
    # The session's requests name their segment, so the engine drafted the final from the
    # segment's last partial answer (engine/drafts.py) and dropped it with the final.
    assert work.requests.get("partial", 0) > 0
    assert work.draft_proposed.get("final", 0) > 0
    assert len(tiny_engine.answers) == 0
