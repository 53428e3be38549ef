"""Fuzzing the worker's request handling over a real gRPC channel (hypothesis).

A worker started through its CLI (`python -m asr_worker serve --engine fake`, one
front process beside the engine process, port 0) gets request sequences a
misbehaving gateway could send (on StreamingRecognize calls, and as the frames of
StreamingRecognizeMux calls): configs, audio and controls in any order and any
number, odd byte counts, absurd sample rates and intervals, unknown enum values,
hotwords of any shape, empty requests, half-closes and cancellations at any point,
raw bytes that are not protobuf at all, and floods. Whatever arrives, the worker must

- end every call with a status (never hang: every call has a deadline, and
  DEADLINE_EXCEEDED is a failure) and only with statuses of its error catalog;
- keep its stream invariants: at most one final per segment id, no partial of a
  segment after its final, the end-of-input acknowledgement after every final;
- stay up and SERVING, and still transcribe a well-formed session afterwards.

Seeded and bounded (derandomize, a fixed example budget), so CI runs the same
inputs every time. A finding becomes an explicit regression test below.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_testkit import wait_serving

from asr.v1 import asr_pb2, asr_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Example budget per property (CI runs exactly these; raise locally with ASR_FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("ASR_FUZZ_EXAMPLES", "150"))
#: Per-call deadline: a worker that neither answers nor ends a call within it is hung.
CALL_DEADLINE_S = 20.0

#: Statuses a call may end with (OK, or a refusal/failure the error catalog maps to).
ALLOWED_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.INTERNAL,
}

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def worker_address():
    """A fake-engine worker started through the serve CLI on 127.0.0.1:0 (one front + engine)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen", "127.0.0.1:0",
         "--front-processes", "1", "--max-streams", "8", "--fake-base-ms", "2", "--fake-per-item-ms", "1",
         "--log-level", "error"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            proc.kill()
            pytest.fail(f"worker did not start: {line!r} {proc.stderr.read()[-2000:]}")
        address = line.split()[1]
        _wait_serving(address, 120.0)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_serving(address: str, timeout_s: float) -> None:
    with grpc.insecure_channel(address) as ch:
        wait_serving(ch, timeout_s, poll_s=0.2)


@pytest.fixture(scope="module")
def channel(worker_address):
    """One channel for every example (as a gateway keeps one per worker)."""
    with grpc.insecure_channel(worker_address) as ch:
        yield ch


@pytest.fixture(scope="module")
def speech() -> bytes:
    """PCM16 of real speech (a slice of the shared recordings), for audio that opens segments."""
    path = Path(os.environ.get("ASR_SHARED_AUDIO", REPO_ROOT.parent / "shared" / "audio")) / "zh" / "damo.wav"
    if not path.exists():
        pytest.skip(f"shared audio not found at {path}")
    data = path.read_bytes()
    i = data.find(b"data")
    return data[i + 8:]


# ------------------------------------------------------------------ strategies

u32 = st.one_of(st.sampled_from([0, 1, 8000, 16000, 22050, 48000, 96000, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1))
texts = st.text(max_size=80)

hotwords = st.lists(
    st.builds(lambda p, w: asr_pb2.Hotword(phrase=p, weight=w), texts,
              st.floats(allow_nan=True, allow_infinity=True, width=32)),
    max_size=40,
)

configs = st.builds(
    lambda sid, wav, mode, rate, hw, itn, lang, interval, resume: asr_pb2.StreamingConfig(
        session_id=sid, wav_name=wav, mode=mode, sample_rate_hz=rate, hotwords=hw, itn=itn,
        language=lang, partial_interval_ms=interval, resume=resume),
    texts, texts,
    st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-5, 1000)),
    u32, hotwords, st.booleans(), texts, u32,
    st.one_of(st.none(), st.builds(lambda o, f: asr_pb2.ResumeState(audio_offset_ms=o, finalized_segments=f),
                                   st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))),
)

#: Configs a gateway would send (valid rate and mode), so that sessions really run and the
#: audio/control paths behind validation get fuzzed too, not only the refusals.
plausible_configs = st.builds(
    lambda rate, mode, hw, interval, itn: asr_pb2.StreamingConfig(
        session_id="fuzz", wav_name="fuzz", mode=mode, sample_rate_hz=rate, hotwords=hw,
        itn=itn, partial_interval_ms=interval),
    st.sampled_from([8000, 16000]), st.sampled_from([1, 2, 3]), hotwords,
    st.one_of(st.just(0), st.integers(0, 5000)), st.booleans(),
)

#: Audio: (kind, byte length, sample rate field); kinds are silence, noise and speech.
audio_specs = st.tuples(
    st.sampled_from(["silence", "noise", "speech"]),
    st.one_of(st.sampled_from([0, 1, 2, 3, 319, 320, 1919, 1920, 1921, 32000, 65535]),
              st.integers(0, 96_000)),
    st.one_of(st.just(0), u32),
)

requests = st.one_of(
    configs.map(lambda c: ("config", c)),
    audio_specs.map(lambda a: ("audio", a)),
    st.one_of(st.sampled_from([0, 1, 2]), st.integers(-3, 50)).map(lambda t: ("control", t)),
    st.just(("empty", None)),
)

sequences = st.tuples(
    # Mostly config-first, as a gateway sends, but any order too.
    st.one_of(plausible_configs.map(lambda c: [("config", c)]), configs.map(lambda c: [("config", c)]),
              st.just([])),
    st.lists(requests, max_size=25),
    # How the client ends: half-close, cancel after N responses, or never (deadline ends it).
    st.sampled_from(["half-close", "half-close", "cancel-after-first"]),
)


def _pcm(kind: str, n: int, speech: bytes, seed: int) -> bytes:
    if kind == "silence":
        return bytes(n)
    if kind == "noise":
        return random.Random(seed).randbytes(n)
    reps = n // max(1, len(speech)) + 1
    return (speech * reps)[:n]


def _materialize(items, speech: bytes) -> list[asr_pb2.StreamingRecognizeRequest]:
    out = []
    for i, (kind, value) in enumerate(items):
        if kind == "config":
            out.append(asr_pb2.StreamingRecognizeRequest(config=value))
        elif kind == "audio":
            k, n, rate = value
            out.append(asr_pb2.StreamingRecognizeRequest(
                audio=asr_pb2.AudioChunk(pcm16le=_pcm(k, n, speech, i), sample_rate_hz=rate)))
        elif kind == "control":
            out.append(asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=value)))
        else:
            out.append(asr_pb2.StreamingRecognizeRequest())
    return out


def _check_invariants(responses) -> None:
    finals: set[int] = set()
    # Segments counted by the last end-of-input acknowledgement: a later final (of a later
    # round) has a higher id; "no final after an ack" held only for one-round sessions.
    acked = 0
    for r in responses:
        kind = r.WhichOneof("streaming_response")
        assert kind is not None, "a response without content"
        if kind == "final":
            assert r.final.segment_id >= acked, "final of a segment the acknowledgement counted"
            assert r.final.segment_id not in finals, f"two finals for segment {r.final.segment_id}"
            finals.add(r.final.segment_id)
        elif kind == "partial":
            seg = r.partial.segment_id
            assert seg not in finals, f"partial of segment {seg} after its final"
        elif kind == "end_of_input":
            acked = r.end_of_input.finalized_segments
        elif kind == "error":
            assert r.error.code != asr_pb2.ERROR_CODE_UNSPECIFIED, "an error without a code"


def _run(channel, reqs, ending: str):
    stub = asr_pb2_grpc.AsrStub(channel)
    call = stub.StreamingRecognize(iter(reqs), timeout=CALL_DEADLINE_S)
    got = []
    try:
        for r in call:
            got.append(r)
            if ending == "cancel-after-first":
                call.cancel()
                break
    except grpc.RpcError:
        pass
    code = call.code()
    return got, code


def _assert_healthy(channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def _well_formed_session(channel, speech: bytes) -> list:
    cfg = asr_pb2.StreamingConfig(session_id="probe", wav_name="probe", sample_rate_hz=16000,
                                  mode=asr_pb2.RECOGNITION_MODE_TWO_PASS)
    reqs = [asr_pb2.StreamingRecognizeRequest(config=cfg)]
    reqs += [asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=speech[i:i + 3200]))
             for i in range(0, len(speech), 3200)]
    reqs.append(asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT)))
    got, code = _run(channel, reqs, "half-close")
    assert code == grpc.StatusCode.OK, code
    return got


# ------------------------------------------------------------------ properties


@FUZZ_SETTINGS
@given(seq=sequences)
def test_any_request_sequence_ends_with_a_catalog_status_and_keeps_invariants(channel, speech, seq):
    head, body, ending = seq
    got, code = _run(channel, _materialize(head + body, speech), ending)
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the worker neither answered nor ended the call"
    assert code in ALLOWED_STATUSES, code
    _check_invariants(got)
    has_eoi = any(k == "control" and v == asr_pb2.CONTROL_TYPE_END_OF_INPUT for k, v in body)
    if head and code == grpc.StatusCode.OK and ending == "half-close" and has_eoi:
        # A valid stream that asked for end of input and ended OK was acknowledged.
        assert any(r.WhichOneof("streaming_response") == "end_of_input" for r in got)


@pytest.mark.parametrize("method", ["StreamingRecognize", "StreamingRecognizeMux"])
@FUZZ_SETTINGS
@given(chunks=st.lists(st.binary(max_size=4096), min_size=1, max_size=8))
def test_bytes_that_are_not_a_request_are_refused_without_harm(channel, method, chunks):
    raw = channel.stream_stream(f"/asr.v1.Asr/{method}",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    call = raw(iter(chunks), timeout=CALL_DEADLINE_S)
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass
    # Regression (found by this fuzzer): undecodable bytes ended the call as UNKNOWN with a
    # traceback, as for a bug in the worker; they are the client's error.
    assert call.code() in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, (
        call.code(), call.details())


def test_worker_is_serving_and_transcribes_after_the_fuzzing(channel, speech):
    _assert_healthy(channel)
    got = _well_formed_session(channel, speech)
    assert any(r.WhichOneof("streaming_response") == "final" and r.final.text for r in got)
    assert got[-1].WhichOneof("streaming_response") == "end_of_input"


def test_flood_of_tiny_chunks_and_streams_beyond_the_limit(channel, speech):
    # 3,000 one-sample chunks on one stream, and twice max-streams streams at once.
    cfg = asr_pb2.StreamingConfig(session_id="flood", sample_rate_hz=16000,
                                  mode=asr_pb2.RECOGNITION_MODE_TWO_PASS)
    reqs = [asr_pb2.StreamingRecognizeRequest(config=cfg)]
    reqs += [asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=speech[2 * i:2 * i + 2]))
             for i in range(3000)]
    reqs.append(asr_pb2.StreamingRecognizeRequest(control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT)))
    got, code = _run(channel, reqs, "half-close")
    assert code == grpc.StatusCode.OK
    assert got[-1].WhichOneof("streaming_response") == "end_of_input"

    stub = asr_pb2_grpc.AsrStub(channel)
    release = threading.Event()

    def held():
        yield asr_pb2.StreamingRecognizeRequest(config=cfg)
        release.wait(15)

    calls = [stub.StreamingRecognize(held(), timeout=CALL_DEADLINE_S) for _ in range(16)]
    time.sleep(1.0)
    release.set()
    codes = []
    for c in calls:
        try:
            for _ in c:
                pass
        except grpc.RpcError:
            pass
        codes.append(c.code())
    assert all(c in ALLOWED_STATUSES for c in codes), codes
    _assert_healthy(channel)
    _well_formed_session(channel, speech)


# ------------------------------------------------------------------ StreamingRecognizeMux

#: Numeric gRPC codes a mux session may end with (SessionEnd.code).
ALLOWED_END_CODES = {s.value[0] for s in ALLOWED_STATUSES} - {grpc.StatusCode.CANCELLED.value[0]}

#: One frame: (session number, what it carries); small numbers so that frames reuse, skip
#: and go back to numbers.
mux_frames = st.tuples(
    st.integers(0, 6),
    st.one_of(
        requests,
        plausible_configs.map(lambda c: ("config", c)),
        st.sampled_from([("half_close", True), ("half_close", False), ("cancel", True),
                         ("cancel", False), ("nothing", None)]),
    ),
)

mux_sequences = st.lists(st.lists(mux_frames, max_size=8), max_size=8)


def _mux_frame(n: int, item, speech: bytes) -> asr_pb2.MuxFrame:
    kind, value = item
    if kind == "half_close":
        return asr_pb2.MuxFrame(session=n, half_close=value)
    if kind == "cancel":
        return asr_pb2.MuxFrame(session=n, cancel=value)
    if kind == "nothing":
        return asr_pb2.MuxFrame(session=n)
    return asr_pb2.MuxFrame(session=n, request=_materialize([item], speech)[0])


@FUZZ_SETTINGS
@given(messages=mux_sequences)
def test_any_mux_frame_sequence_ends_every_session_once_and_the_call_ok(channel, speech, messages):
    reqs = [asr_pb2.StreamingRecognizeMuxRequest(
        frames=[_mux_frame(n, item, speech) for n, item in frames])
        for frames in messages]
    # Every number half-closed at the end, so that the call can end (frames for sessions that
    # ended or were cancelled, or for numbers below the highest, are ignored).
    reqs.append(asr_pb2.StreamingRecognizeMuxRequest(
        frames=[asr_pb2.MuxFrame(session=n, half_close=True) for n in range(7)]))
    call = asr_pb2_grpc.AsrStub(channel).StreamingRecognizeMux(iter(reqs), timeout=CALL_DEADLINE_S)
    events: dict[int, list] = {}
    try:
        for msg in call:
            assert msg.events, "a response message without events"
            for ev in msg.events:
                events.setdefault(ev.session, []).append(ev)
    except grpc.RpcError:
        pass
    assert call.code() == grpc.StatusCode.OK, (call.code(), call.details())
    cancelled = {n for frames in messages for n, (k, v) in frames if k == "cancel" and v}
    for n, evs in events.items():
        kinds = [e.WhichOneof("event") for e in evs]
        assert None not in kinds, "an event without content"
        if n not in cancelled:
            assert kinds.count("end") == 1 and kinds[-1] == "end", (n, kinds)
            assert evs[-1].end.code in ALLOWED_END_CODES, evs[-1].end
        else:
            assert kinds.count("end") <= 1 and ("end" not in kinds or kinds[-1] == "end")
        _check_invariants([e.response for e in evs if e.HasField("response")])
    # Which numbers opened a session (a number above every earlier one, unless its first frame
    # cancels it): each of them not cancelled later ended exactly once, as checked above.
    opened, highest = set(), -1
    for n, (kind, value) in [f for frames in messages for f in frames] + [
            (n, ("half_close", True)) for n in range(7)]:
        if n > highest:
            highest = n
            if not (kind == "cancel" and value):
                opened.add(n)
    for n in opened - cancelled:
        assert n in events, f"session {n} got no end"
    assert set(events) <= opened


