"""`serve` as a process tree (one engine process, N front processes), run as a real subprocess.

One address, health and load report for the whole worker; sessions decode across the process
boundary with the same results as in-process; the death of any child ends the worker with a
non-zero status and one log line; SIGTERM drains streams on every front.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_testkit import read_wav, requests_for, wait_serving

from asr.v1 import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.timeout(120)

WORKER = Path(__file__).resolve().parents[2] / "worker-py"


class ProcessWorker:
    """`python -m asr_worker serve --engine fake` with N fronts; stderr lines are collected."""

    def __init__(self, *extra: str, fronts: int = 2, own_group: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asr_worker", "serve", "--engine", "fake", "--listen",
             "127.0.0.1:0", "--front-processes", str(fronts), "--torch-threads", "1",
             "--fake-base-ms", "2", "--fake-per-item-ms", "1", *extra],
            cwd=WORKER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(WORKER)}, start_new_session=own_group,
        )
        self.logs: list[dict] = []
        self.raw_stderr: list[str] = []
        self._started = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        line = self.proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:"), line
        self.address = line.split()[1]
        assert self._started.wait(60), "no 'worker started' log line"
        self.wait_serving()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.raw_stderr.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self.logs.append(rec)
            if rec.get("msg") == "worker started":
                self.pids = dict(kv.split("=") for kv in rec["pids"].split(","))
                self._started.set()

    def channel(self) -> grpc.Channel:
        """A channel with its own connection (not shared with other channels)."""
        return grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)])

    def wait_serving(self) -> None:
        with self.channel() as ch:
            wait_serving(ch, 60, poll_s=0.05)

    def errors(self) -> list[dict]:
        return [r for r in self.logs if r.get("level") == "error"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def two_fronts():
    """One worker shared by the tests that leave it as they found it (max 2 streams)."""
    w = ProcessWorker("--max-streams", "2", fronts=2)
    try:
        yield w
    finally:
        w.stop()


def _report(channel: grpc.Channel) -> asr_pb2.LoadReport:
    return next(asr_pb2_grpc.AsrStub(channel).WatchLoad(asr_pb2.WatchLoadRequest()))


def _wait_idle(channel: grpc.Channel) -> None:
    """Until the worker reports no open stream (releases from earlier tests have landed)."""
    deadline = time.monotonic() + 10
    while _report(channel).active_streams and time.monotonic() < deadline:
        time.sleep(0.05)


def _channels_per_front(worker: ProcessWorker, fronts: int, limit: int = 40):
    """Open connections until every front is reached; {front_id: channel}; closes the rest."""
    by_front: dict[int, grpc.Channel] = {}
    for _ in range(limit):
        ch = worker.channel()
        front = _report(ch).front_id
        if front in by_front:
            ch.close()
        else:
            by_front[front] = ch
        if len(by_front) == fronts:
            break
    return by_front


def test_sessions_decode_across_the_process_boundary(two_fronts, shared_audio, audio_manifest):
    pcm, rate = read_wav(shared_audio / "synth/three_utterances.wav")
    cfg = asr_pb2.StreamingConfig(mode=asr_pb2.RECOGNITION_MODE_TWO_PASS, sample_rate_hz=rate)
    with two_fronts.channel() as ch:
        responses = list(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(
            iter(requests_for(pcm.tobytes(), config=cfg))))
    finals = [r.final for r in responses if r.HasField("final")]
    assert [f.segment_id for f in finals] == [0, 1, 2]
    expected = audio_manifest["files"]["synth/three_utterances.wav"]["utterances"]
    for f, utt in zip(finals, expected, strict=True):
        assert abs(f.start_ms - utt["segment"][0] * 1000) <= 300
        assert f.text, "the engine decoded the segment audio it was sent"
    partials = [r.partial for r in responses if r.HasField("partial")]
    assert partials and any(p.delta for p in partials)
    # The fake engine is deterministic: the final of each segment is the text of exactly its
    # audio, so it extends what the partials emitted (audio reached the engine complete).
    for f in finals:
        emitted = "".join(p.delta for p in partials if p.segment_id == f.segment_id)
        assert f.text.startswith(emitted)
    assert responses[-1].end_of_input.finalized_segments == 3


def test_every_front_reports_the_whole_worker(two_fronts):
    by_front = _channels_per_front(two_fronts, 2)
    assert sorted(by_front) == [0, 1], "connections reach both fronts (SO_REUSEPORT)"
    _wait_idle(by_front[0])
    try:
        # Two open streams on front 0: the report of front 1 counts them too.
        stub0 = asr_pb2_grpc.AsrStub(by_front[0])
        gate = threading.Event()

        def held():
            yield asr_pb2.StreamingRecognizeRequest(
                config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
            gate.wait(30)

        calls = [stub0.StreamingRecognize(held()) for _ in range(2)]
        deadline = time.monotonic() + 10
        report = _report(by_front[1])
        while time.monotonic() < deadline and report.active_streams < 2:
            time.sleep(0.1)
            report = _report(by_front[1])
        assert report.front_id == 1
        assert report.active_streams == 2
        assert list(report.front_streams) == [2, 0]
        # Worker-wide admission: 2 of --max-streams 2 are open (on front 0), so front 1's
        # report says the worker accepts no more.
        assert report.engine == "fake" and not report.accepting
        gate.set()
        for c in calls:
            list(c)
    finally:
        for ch in by_front.values():
            ch.close()


def test_max_streams_holds_across_fronts(two_fronts):
    w = two_fronts
    by_front = _channels_per_front(w, 2)
    try:
        assert sorted(by_front) == [0, 1]
        _wait_idle(by_front[0])
        gate = threading.Event()

        def held():
            yield asr_pb2.StreamingRecognizeRequest(
                config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
            gate.wait(30)

        calls = [asr_pb2_grpc.AsrStub(by_front[i]).StreamingRecognize(held()) for i in (0, 1)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _report(by_front[0]).active_streams < 2:
            time.sleep(0.05)
        for ch in by_front.values():
            with pytest.raises(grpc.RpcError) as info:
                list(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(iter([
                    asr_pb2.StreamingRecognizeRequest(
                        config=asr_pb2.StreamingConfig(sample_rate_hz=16000))])))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        for c in calls:
            list(c)
    finally:
        for ch in by_front.values():
            ch.close()


@pytest.mark.parametrize("child", ["front 1", "engine"])
def test_sigkill_of_a_child_ends_the_worker_with_one_line(child):
    w = ProcessWorker(fronts=2)
    try:
        os.kill(int(w.pids[child]), signal.SIGKILL)
        assert w.proc.wait(timeout=30) != 0
        time.sleep(0.2)  # let the reader thread take the last lines
        errors = w.errors()
        assert len(errors) == 1, w.raw_stderr
        assert errors[0]["msg"].startswith(f"{child} process") and "SIGKILL" in errors[0]["msg"]
        # Nothing of the worker is left behind.
        for pid in w.pids.values():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"child {pid} survived")
    finally:
        w.stop()


def test_sigterm_drains_streams_on_every_front(shared_audio):
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    w = ProcessWorker("--drain-grace-s", "20", fronts=2)
    try:
        by_front = _channels_per_front(w, 2)
        assert sorted(by_front) == [0, 1]
        go = threading.Event()
        results: dict[int, list] = {}

        def session(front: int) -> None:
            def reqs():
                yield asr_pb2.StreamingRecognizeRequest(
                    config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
                yield asr_pb2.StreamingRecognizeRequest(
                    audio=asr_pb2.AudioChunk(pcm16le=pcm.tobytes()[:64000]))
                go.wait(30)  # input ends only after SIGTERM
                yield asr_pb2.StreamingRecognizeRequest(
                    audio=asr_pb2.AudioChunk(pcm16le=pcm.tobytes()[64000:]))
                yield asr_pb2.StreamingRecognizeRequest(
                    control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))

            call = asr_pb2_grpc.AsrStub(by_front[front]).StreamingRecognize(reqs())
            results[front] = list(call)

        threads = [threading.Thread(target=session, args=(f,)) for f in (0, 1)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _report(by_front[0]).active_streams < 2:
            time.sleep(0.05)
        w.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Draining: NOT_SERVING and new streams refused, on every front.
        for ch in by_front.values():
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        go.set()
        for t in threads:
            t.join(30)
        for front in (0, 1):
            got = results[front]
            assert got[-1].HasField("end_of_input"), f"front {front} finished its stream"
            assert any(r.HasField("final") and r.final.text for r in got)
        assert w.proc.wait(timeout=30) == 0
        assert not w.errors(), w.raw_stderr
        for ch in by_front.values():
            ch.close()
    finally:
        w.stop()


def test_ctrl_c_to_the_process_group_drains_instead_of_cutting_streams(shared_audio):
    """A terminal's SIGINT reaches every process; streams still get the whole grace period."""
    pcm, _ = read_wav(shared_audio / "zh/damo.wav")
    w = ProcessWorker("--drain-grace-s", "20", fronts=2, own_group=True)
    try:
        go = threading.Event()
        got: list = []

        def reqs():
            yield asr_pb2.StreamingRecognizeRequest(
                config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
            yield asr_pb2.StreamingRecognizeRequest(
                audio=asr_pb2.AudioChunk(pcm16le=pcm.tobytes()[:64000]))
            go.wait(30)
            yield asr_pb2.StreamingRecognizeRequest(
                audio=asr_pb2.AudioChunk(pcm16le=pcm.tobytes()[64000:]))
            yield asr_pb2.StreamingRecognizeRequest(
                control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))

        with w.channel() as ch:
            t = threading.Thread(
                target=lambda: got.extend(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(reqs())))
            t.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _report(ch).active_streams < 1:
                time.sleep(0.05)
            os.killpg(w.proc.pid, signal.SIGINT)
            time.sleep(1.5)
            go.set()
            t.join(30)
        assert got and got[-1].HasField("end_of_input"), "the stream finished within the grace"
        assert w.proc.wait(timeout=30) == 0
        assert not w.errors(), w.raw_stderr
    finally:
        w.stop()


def test_a_silent_engine_makes_every_front_not_serving_until_it_is_heard_again():
    """SIGSTOP of the engine process only: the fronts stay up but say the engine is stalled."""
    from asr_worker.processes import ENGINE_STALL_S

    w = ProcessWorker(fronts=2)
    engine = int(w.pids["engine"])
    by_front = _channels_per_front(w, 2)
    try:
        assert sorted(by_front) == [0, 1]

        def status(ch: grpc.Channel) -> int:
            return health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2).status

        def until(pred, within_s: float) -> None:
            deadline = time.monotonic() + within_s
            while not pred():
                assert time.monotonic() < deadline, f"not within {within_s} s"
                time.sleep(0.05)

        # Every front has heard that the engine is warm (not only the one the worker's start
        # was checked on): a front that never has is NOT_SERVING anyway and watches nothing.
        for ch in by_front.values():
            until(lambda ch=ch: status(ch) == health_pb2.HealthCheckResponse.SERVING, 30)
        os.kill(engine, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            for ch in by_front.values():
                # The 5 s hang target, less the gateway's share (one report, then its cancel).
                until(lambda ch=ch: status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING,
                      4.0 - (time.monotonic() - stopped_at))
                report = _report(ch)
                assert report.engine_stalled and not report.accepting
                # A stream that reaches the worker anyway is refused at once (retryable).
                with pytest.raises(grpc.RpcError) as info:
                    list(asr_pb2_grpc.AsrStub(ch).StreamingRecognize(iter([
                        asr_pb2.StreamingRecognizeRequest(
                            config=asr_pb2.StreamingConfig(sample_rate_hz=16000))]), timeout=5))
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            os.kill(engine, signal.SIGCONT)
        for ch in by_front.values():
            until(lambda ch=ch: status(ch) == health_pb2.HealthCheckResponse.SERVING, 10)
            report = _report(ch)
            assert not report.engine_stalled and report.accepting
        # The cheap reaction only: the worker is still running (it ends itself only after
        # ENGINE_STALL_S of silence).
        assert time.monotonic() - stopped_at < ENGINE_STALL_S
        assert w.proc.poll() is None
        stalls = [r for r in w.logs if r.get("msg", "").startswith("engine silent")]
        assert len(stalls) == 2, stalls
        assert not w.errors(), w.raw_stderr
    finally:
        for ch in by_front.values():
            ch.close()
        w.stop()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def test_children_serve_grpc_without_the_event_engine_listener(two_fronts):
    """The supervisor turns off gRPC core's EventEngine listener in every child (CPU per message)."""
    from asr_worker.processes import GRPC_EXPERIMENTS_OFF

    children = [int(pid) for name, pid in two_fronts.pids.items() if name.strip() != "supervisor"]
    assert len(children) == 3  # two fronts and the engine
    for pid in children:
        assert _environ(pid).get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS_OFF


def test_an_operators_grpc_experiments_setting_is_kept(monkeypatch):
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_callback_cq")
    w = ProcessWorker(fronts=1)
    try:
        for name, pid in w.pids.items():
            if name.strip() != "supervisor":
                assert _environ(int(pid)).get("GRPC_EXPERIMENTS") == "-event_engine_callback_cq"
    finally:
        w.stop()


def test_sessions_cancelled_while_being_admitted_give_their_admission_back(two_fronts):
    """A front asks the engine process to admit a stream; a mux session cancelled (or a call
    ended) before the answer came must still release what the engine admitted, or the worker
    fills up with streams nobody has."""
    cfg = asr_pb2.StreamingRecognizeRequest(config=asr_pb2.StreamingConfig(sample_rate_hz=16000))
    eoi = asr_pb2.StreamingRecognizeRequest(
        control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT))

    def cancelled_at_once():
        for n in range(1, 31):
            yield asr_pb2.StreamingRecognizeMuxRequest(frames=[asr_pb2.MuxFrame(session=n, request=cfg)])
            yield asr_pb2.StreamingRecognizeMuxRequest(frames=[asr_pb2.MuxFrame(session=n, cancel=True)])

    with two_fronts.channel() as ch:
        _wait_idle(ch)
        stub = asr_pb2_grpc.AsrStub(ch)
        ends = [ev for msg in stub.StreamingRecognizeMux(cancelled_at_once(), timeout=30)
                for ev in msg.events if ev.HasField("end")]
        assert all(e.end.code in (0, 8) for e in ends)  # refused while earlier admissions were out
        _wait_idle(ch)
        assert _report(ch).active_streams == 0
        # max-streams is 2: a leaked admission or two would refuse both of these.
        session = [asr_pb2.MuxFrame(session=n, request=r) for n in (1, 2) for r in (cfg, eoi)]
        session += [asr_pb2.MuxFrame(session=n, half_close=True) for n in (1, 2)]
        events = [ev for msg in stub.StreamingRecognizeMux(
            iter([asr_pb2.StreamingRecognizeMuxRequest(frames=session)]), timeout=30) for ev in msg.events]
        assert sorted((e.session, e.end.code) for e in events if e.HasField("end")) == [(1, 0), (2, 0)]
