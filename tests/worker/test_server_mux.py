"""StreamingRecognizeMux over a real grpc.aio server: many sessions on one call, each with the
rules, results and statuses of its own StreamingRecognize call; per-session ends, flow control
and batched output."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import grpc
import numpy as np
import pytest
from worker_testkit import collect, read_wav, requests_for, start_worker

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(60)

CFG16 = asr_pb2.StreamingConfig(session_id="t", sample_rate_hz=16000)
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 0, 3, 8, 13, 14


def _req(n: int, request: asr_pb2.StreamingRecognizeRequest) -> asr_pb2.MuxFrame:
    return asr_pb2.MuxFrame(session=n, request=request)


def _half_close(n: int) -> asr_pb2.MuxFrame:
    return asr_pb2.MuxFrame(session=n, half_close=True)


def _cancel(n: int) -> asr_pb2.MuxFrame:
    return asr_pb2.MuxFrame(session=n, cancel=True)


def _audio(pcm: bytes) -> asr_pb2.StreamingRecognizeRequest:
    return asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=pcm))


def _control(t) -> asr_pb2.StreamingRecognizeRequest:
    return asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=t))


def _config(cfg=CFG16) -> asr_pb2.StreamingRecognizeRequest:
    return asr_pb2.StreamingRecognizeRequest(config=cfg)


class MuxClient:
    """One mux call: writes frames, and sorts every event it reads by session (in order)."""

    def __init__(self, stub: asr_pb2_grpc.AsrStub) -> None:
        self.call = stub.StreamingRecognizeMux()
        #: Per session: its events in order (MuxEvent).
        self.events: dict[int, list[asr_pb2.MuxEvent]] = defaultdict(list)
        #: Every event of the call in arrival order.
        self.all: list[asr_pb2.MuxEvent] = []
        self.messages = 0
        self._changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                self.messages += 1
                for ev in msg.events:
                    self.events[ev.session].append(ev)
                    self.all.append(ev)
                self._changed.set()
        except grpc.aio.AioRpcError:
            pass  # the call's status is the test's to check
        finally:
            self._changed.set()

    async def send(self, *frames: asr_pb2.MuxFrame) -> None:
        await self.call.write(asr_pb2.StreamingRecognizeMuxRequest(frames=frames))

    async def wait_for(self, predicate, within_s: float = 20.0) -> None:
        async def loop():
            while not predicate():
                if self.reader.done():
                    raise AssertionError(f"call ended first: {await self.call.code()}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), within_s)

    async def end_of(self, n: int, within_s: float = 20.0) -> asr_pb2.SessionEnd:
        await self.wait_for(lambda: any(e.HasField("end") for e in self.events[n]), within_s)
        return self.events[n][-1].end

    def responses(self, n: int) -> list[asr_pb2.StreamingRecognizeResponse]:
        return [e.response for e in self.events[n] if e.HasField("response")]


async def _wait(predicate, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def _call_outcome(stub, requests) -> tuple[int, str, list]:
    """What a StreamingRecognize call with `requests` ends with: (code, details, responses)."""
    call = stub.StreamingRecognize(iter(requests))
    got = []
    try:
        async for r in call:
            got.append(r)
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    return code.value[0], (await call.details()) or "", got


def _stable(responses):
    """The responses whose presence and content do not depend on timing (no partials: a
    partial superseded before it was sent is dropped)."""
    return [r for r in responses if not r.HasField("partial")]


async def test_sessions_on_one_mux_call_get_the_same_results_as_separate_calls(
        silero, shared_audio):
    clips = {
        1: (read_wav(shared_audio / "synth/three_utterances.wav")[0], 16000, 1920),
        2: (read_wav(shared_audio / "zh/damo.wav")[0], 16000, 3200),
        3: (read_wav(shared_audio / "zh/damo.wav")[0][::2].copy(), 8000, 960),
    }
    async with start_worker(silero) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        plans = {
            n: requests_for(pcm.tobytes(), config=asr_pb2.StreamingConfig(
                session_id=f"s{n}", sample_rate_hz=rate, mode=asr_pb2.RECOGNITION_MODE_TWO_PASS),
                chunk_bytes=chunk)
            for n, (pcm, rate, chunk) in clips.items()
        }
        separate = {n: await collect(stub.StreamingRecognize(iter(reqs))) for n, reqs in plans.items()}

        mux = MuxClient(stub)
        # Interleaved: each message carries the next frame of every session still sending.
        for i in range(max(len(r) for r in plans.values()) + 1):
            frames = [_req(n, reqs[i]) if i < len(reqs) else _half_close(n)
                      for n, reqs in plans.items() if i <= len(reqs)]
            await mux.send(*frames)
        ends = {n: await mux.end_of(n) for n in plans}
        await mux.call.done_writing()
        await mux.reader
        assert await mux.call.code() == grpc.StatusCode.OK
    assert {n: (e.code, e.message) for n, e in ends.items()} == {n: (OK, "") for n in plans}
    for n in plans:
        got = mux.responses(n)
        assert _stable(got) == _stable(separate[n])
        assert [f.final.segment_id for f in got if f.HasField("final")] == (
            [0, 1, 2] if n == 1 else [0])
        assert got[-1].HasField("end_of_input")


@pytest.mark.parametrize(
    "requests",
    [
        [_audio(b"\0\0")],
        [asr_pb2.StreamingRecognizeRequest()],
        [_config(asr_pb2.StreamingConfig(sample_rate_hz=44100))],
        [_config(), _audio(b"\0\0\0")],
        [_config(), _control(asr_pb2.CONTROL_TYPE_UNSPECIFIED)],
        [_config(), _audio(b"\0\0" * 100), _config()],
    ],
    ids=["audio-first", "empty-first", "bad-rate", "odd-bytes", "bad-control", "config-mid-round"],
)
async def test_a_rule_broken_on_one_session_ends_only_that_session_as_its_call_would_end(
        worker, stub, shared_audio, requests):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    code, details, _ = await _call_outcome(stub, requests)
    assert code == INVALID_ARGUMENT
    mux = MuxClient(stub)
    good = requests_for(pcm.tobytes(), config=CFG16, chunk_bytes=16000)
    await mux.send(_req(1, good[0]), *[_req(2, r) for r in requests])
    end = await mux.end_of(2)
    assert (end.code, end.message) == (code, details)
    await mux.send(*[_req(1, r) for r in good[1:]], _half_close(1))
    assert (await mux.end_of(1)).code == OK
    assert mux.responses(1)[-1].HasField("end_of_input")
    await mux.call.done_writing()
    await mux.reader
    assert await mux.call.code() == grpc.StatusCode.OK
    await _wait(lambda: worker.service.active_streams == 0)


async def test_half_close_ends_the_session_ok_after_its_final(stub, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    mux = MuxClient(stub)
    reqs = requests_for(pcm.tobytes(), config=CFG16, end_of_input=False, chunk_bytes=6400)
    await mux.send(*[_req(7, r) for r in reqs], _half_close(7))
    end = await mux.end_of(7)
    assert (end.code, end.message) == (OK, "")
    kinds = [e.WhichOneof("event") for e in mux.events[7]]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    finals = [r.final for r in mux.responses(7) if r.HasField("final")]
    assert len(finals) == 1 and finals[0].reason == asr_pb2.ENDPOINT_REASON_END_OF_INPUT
    assert mux.responses(7)[-1].HasField("final")
    mux.call.cancel()


async def test_cancelled_session_is_freed_at_once_and_gets_nothing_more(worker, stub, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    mux = MuxClient(stub)
    await mux.send(_req(1, _config()), *[_req(1, _audio(pcm.tobytes()[i:i + 3200]))
                                         for i in range(0, len(pcm) * 2, 3200)])
    await mux.wait_for(lambda: any(r.HasField("speech_event") for r in mux.responses(1)))
    assert worker.service.active_streams == 1
    await mux.send(_cancel(1))
    await _wait(lambda: worker.service.active_streams == 0)
    assert worker.scheduler.queue_length == 0
    # Later sessions on the same call run to their ends (events sent before the cancel was
    # read may still arrive before the first); nothing more comes for session 1, not even an end.
    for n in (2, 3):
        await mux.send(_req(n, _config()), _req(n, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)),
                       _half_close(n), _req(1, _audio(b"\0\0" * 1600)))
        assert (await mux.end_of(n)).code == OK
        if n == 2:
            seen = len(mux.events[1])
    assert len(mux.events[1]) == seen
    assert not any(e.HasField("end") for e in mux.events[1])
    assert worker.service.active_streams == 0
    mux.call.cancel()


async def test_frames_for_lower_or_ended_session_numbers_are_ignored(worker, stub):
    mux = MuxClient(stub)
    await mux.send(_req(5, _config()), _half_close(5))
    assert (await mux.end_of(5)).code == OK
    # Session 5 ended; 3 was never used but is below the highest number seen: both ignored.
    await mux.send(_req(5, _audio(b"\0\0" * 1600)), _req(5, _config()), _req(3, _config()),
                   _half_close(3))
    await mux.send(_req(9, _config()), _req(9, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)),
                   _half_close(9))
    assert (await mux.end_of(9)).code == OK
    assert [e.WhichOneof("event") for e in mux.events[5]] == ["end"]
    assert 3 not in mux.events
    assert [r.WhichOneof("streaming_response") for r in mux.responses(9)] == ["final", "end_of_input"]
    await mux.call.done_writing()
    await mux.reader
    assert await mux.call.code() == grpc.StatusCode.OK
    assert worker.service.active_streams == 0


async def test_admission_limit_refuses_only_the_extra_session(silero):
    async with start_worker(silero, max_streams=2) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        mux = MuxClient(stub)
        await mux.send(_req(1, _config()), _req(2, _config()))
        await _wait(lambda: w.service.active_streams == 2)
        code, details, _ = await _call_outcome(stub, [_config()])
        await mux.send(_req(3, _config()))
        end = await mux.end_of(3)
        assert (end.code, end.message) == (code, details) == (RESOURCE_EXHAUSTED, details)
        assert "capacity" in end.message
        assert w.service.active_streams == 2  # a mux call is not a stream; its sessions are
        await mux.send(_half_close(1), _half_close(2))
        assert (await mux.end_of(1)).code == OK and (await mux.end_of(2)).code == OK
        await mux.call.done_writing()
        await mux.reader
        assert w.service.active_streams == 0 and w.service.accepting


async def test_drain_ends_open_sessions_unavailable_refuses_new_ones_then_ends_the_call(
        silero, shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    async with start_worker(silero) as w, grpc.aio.insecure_channel(w.address) as ch:
        stub = asr_pb2_grpc.AsrStub(ch)
        mux = MuxClient(stub)
        await mux.send(_req(1, _config()), _req(1, _audio(pcm.tobytes()[:32000])),
                       _req(2, _config()))
        await _wait(lambda: w.service.active_streams == 2)
        drain = asyncio.create_task(w.server.drain(1.0))
        await asyncio.sleep(0.1)
        await mux.send(_req(3, _config()))
        refused = await mux.end_of(3)
        assert refused.code == UNAVAILABLE and "draining" in refused.message
        # One session ends within the grace period as usual ...
        await mux.send(_req(2, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)), _half_close(2))
        assert (await mux.end_of(2)).code == OK
        # ... the other is ended UNAVAILABLE (retryable) after it, then the call itself.
        lingering = await mux.end_of(1, within_s=10)
        assert lingering.code == UNAVAILABLE
        await asyncio.wait_for(drain, 10)
        await mux.reader
        assert await mux.call.code() == grpc.StatusCode.UNAVAILABLE
        assert w.service.active_streams == 0


async def test_malformed_mux_request_aborts_the_whole_call_invalid_argument(worker):
    async with grpc.aio.insecure_channel(worker.address) as ch:
        raw = ch.stream_stream("/asr.v1.Asr/StreamingRecognizeMux",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        call = raw()
        opening = asr_pb2.StreamingRecognizeMuxRequest(frames=[_req(1, _config())])
        await call.write(opening.SerializeToString())
        await _wait(lambda: worker.service.active_streams == 1)
        await call.write(b"\xff\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamingRecognizeMuxRequest" in info.value.details()
    await _wait(lambda: worker.service.active_streams == 0)


async def test_a_bug_in_one_session_ends_it_internal_and_the_others_go_on(
        worker, stub, monkeypatch):
    from asr_worker.session import Session

    handle = Session.handle

    def breaks_on_commit(self, req):
        if req.HasField("control") and req.control.type == asr_pb2.CONTROL_TYPE_COMMIT:
            raise RuntimeError("a bug")
        return handle(self, req)

    monkeypatch.setattr(Session, "handle", breaks_on_commit)
    mux = MuxClient(stub)
    await mux.send(_req(1, _config()), _req(2, _config()),
                   _req(1, _control(asr_pb2.CONTROL_TYPE_COMMIT)))
    end = await mux.end_of(1)
    assert (end.code, end.message) == (INTERNAL, "internal error: RuntimeError")
    await mux.send(_req(2, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)), _half_close(2))
    assert (await mux.end_of(2)).code == OK
    await mux.call.done_writing()
    await mux.reader
    assert await mux.call.code() == grpc.StatusCode.OK


class _HeldFinals:
    """Makes the fake engine's finals wait for `release` (partials and warm-up do not)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def engine(self):
        from asr_worker.engine.fake import FakeEngine

        release = self.release

        class HeldFinals(FakeEngine):
            def decode_batch(self, requests):
                if self.warmed_up and any(r.kind == "final" for r in requests):
                    release.wait(20)
                return super().decode_batch(requests)

        return HeldFinals(0, 0)


async def test_paused_session_gets_flow_paused_then_resumed_while_others_go_on(silero, shared_audio):
    from asr_worker.session import SessionOptions

    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    speech = pcm.tobytes()
    held = _HeldFinals()
    async with start_worker(silero, engine=held.engine(), batch_window_ms=0,
                            session=SessionOptions(max_outstanding_finals=1)) as w, \
            grpc.aio.insecure_channel(w.address) as ch:
        mux = MuxClient(asr_pb2_grpc.AsrStub(ch))
        offline = asr_pb2.StreamingConfig(sample_rate_hz=16000, mode=asr_pb2.RECOGNITION_MODE_OFFLINE)
        # Session 1's commit submits a final that the engine holds: one outstanding final is
        # its limit, so its input pauses; its next frames are held, not refused.
        await mux.send(_req(1, _config(offline)), _req(1, _audio(speech[:48000])),
                       _req(1, _control(asr_pb2.CONTROL_TYPE_COMMIT)))
        await mux.wait_for(lambda: any(e.HasField("flow") for e in mux.events[1]))
        assert [e.flow.paused for e in mux.events[1] if e.HasField("flow")] == [True]
        await mux.send(_req(1, _audio(speech[48000:])), _req(1, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)),
                       _half_close(1))
        # Meanwhile session 2 on the same call is read and answered (its VAD events need no engine).
        await mux.send(_req(2, _config(offline)), _req(2, _audio(speech)))
        await mux.wait_for(lambda: any(r.HasField("speech_event") for r in mux.responses(2)))
        assert not any(e.HasField("flow") and not e.flow.paused for e in mux.events[1])
        held.release.set()
        assert (await mux.end_of(1)).code == OK
        await mux.send(_req(2, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)), _half_close(2))
        assert (await mux.end_of(2)).code == OK
        mux.call.cancel()
    flows = [e.flow.paused for e in mux.events[1] if e.HasField("flow")]
    assert flows[:2] == [True, False]
    kinds = [e.WhichOneof("event") for e in mux.events[1]]
    resumed = kinds.index("flow", kinds.index("flow") + 1)
    finals = [r.final for r in mux.responses(1) if r.HasField("final")]
    assert [f.reason for f in finals][:1] == [asr_pb2.ENDPOINT_REASON_COMMIT]
    assert mux.responses(1)[-1].HasField("end_of_input")
    assert resumed < len(kinds) - 1
    # Session 2 was answered while session 1 was paused.
    order = [(e.session, e.WhichOneof("event"), e.flow.paused) for e in mux.all]
    paused_at = order.index((1, "flow", True))
    resumed_at = order.index((1, "flow", False))
    assert any(s == 2 for s, _, _ in order[paused_at:resumed_at])


async def test_session_sending_past_its_pause_ends_resource_exhausted(silero, shared_audio):
    from asr_worker.session import SessionOptions

    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    held = _HeldFinals()
    async with start_worker(silero, engine=held.engine(), batch_window_ms=0,
                            session=SessionOptions(max_outstanding_finals=1)) as w, \
            grpc.aio.insecure_channel(w.address) as ch:
        mux = MuxClient(asr_pb2_grpc.AsrStub(ch))
        await mux.send(_req(1, _config()), _req(1, _audio(pcm.tobytes()[:48000])),
                       _req(1, _control(asr_pb2.CONTROL_TYPE_COMMIT)))
        await mux.wait_for(lambda: any(e.HasField("flow") for e in mux.events[1]))
        chunk = bytes(3 * 1024 * 1024)
        for _ in range(6):  # 18 MiB sent past the pause
            await mux.send(_req(1, _audio(chunk)))
        end = await mux.end_of(1)
        held.release.set()
        assert end.code == RESOURCE_EXHAUSTED and "past the pause" in end.message
        await _wait(lambda: w.service.active_streams == 0)
        mux.call.cancel()


async def test_load_report_says_the_worker_serves_mux(worker, stub):
    assert worker.service.load_report().mux
    watch = stub.WatchLoad(asr_pb2.WatchLoadRequest(interval_ms=60_000))
    assert (await asyncio.wait_for(watch.read(), 2)).mux
    watch.cancel()


async def test_events_of_many_sessions_come_in_fewer_messages_than_events(stub):
    silence = np.zeros(1600, dtype="<i2").tobytes()
    mux = MuxClient(stub)
    frames = []
    for n in range(1, 13):
        frames += [_req(n, _config()), _req(n, _audio(silence)),
                   _req(n, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)), _half_close(n)]
    await mux.send(*frames)
    for n in range(1, 13):
        assert (await mux.end_of(n)).code == OK
        assert [e.WhichOneof("event") for e in mux.events[n]] == ["response", "response", "end"]
    assert mux.messages < len(mux.all) == 36
    mux.call.cancel()


async def test_client_half_closing_the_call_leaves_open_sessions_running_until_they_end(
        worker, stub):
    mux = MuxClient(stub)
    await mux.send(_req(1, _config()), _req(2, _config()),
                   _req(1, _control(asr_pb2.CONTROL_TYPE_END_OF_INPUT)), _half_close(1))
    await mux.call.done_writing()
    assert (await mux.end_of(1)).code == OK
    await asyncio.sleep(0.2)
    assert not mux.reader.done() and worker.service.active_streams == 1
    # Session 2 can take no more input; cancelling the call frees it.
    mux.call.cancel()
    await _wait(lambda: worker.service.active_streams == 0)


async def test_a_mux_call_opened_after_the_worker_began_to_stop_ends_unavailable(worker, stub):
    from asr_worker.errors import Draining

    worker.service.start_draining()
    worker.service.stop_mux_calls(Draining("worker shutting down; resume elsewhere"))
    mux = MuxClient(stub)
    await mux.send(_req(1, _config()))
    await mux.reader
    assert await mux.call.code() == grpc.StatusCode.UNAVAILABLE
    assert [e.end.code for e in mux.events[1]] in ([], [UNAVAILABLE])
    assert worker.service.active_streams == 0


def test_a_batch_past_one_mib_is_split_in_order_into_messages_under_the_limit():
    from asr_worker.mux import MAX_RESPONSE_BYTES, _messages

    final = asr_pb2.StreamingRecognizeResponse(final=asr_pb2.FinalResult(text="今" * 300))
    batch = [(n % 50, final) for n in range(3000)]  # ~2.7 MiB of events
    batch.insert(1500, asr_pb2.MuxEvent(session=7, end=asr_pb2.SessionEnd(code=OK)))
    messages = _messages(batch)
    assert len(messages) >= 3
    assert all(m.ByteSize() <= MAX_RESPONSE_BYTES for m in messages)
    events = [e for m in messages for e in m.events]
    assert len(events) == 3001
    assert events[1500].HasField("end") and events[1500].session == 7
    assert [e.session for e in events if e.HasField("response")] == [n % 50 for n in range(3000)]
    assert len(_messages(batch[:10])) == 1
