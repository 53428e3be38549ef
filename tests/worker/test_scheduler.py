"""The scheduler: no request lost, failures fanned out, priorities, bounds, iteration-level batching."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from asr_worker.engine.base import DecodeOptions, DecodeRequest, DecodeResult
from asr_worker.engine.fake import FakeEngine, SteppingFakeEngine
from asr_worker.errors import InferenceFailed, Overloaded
from asr_worker.scheduler import Scheduler, TicketState

pytestmark = pytest.mark.timeout(30)

OPTS = DecodeOptions()


def _req(seconds: float = 1.0, kind: str = "final", seed: int = 0) -> DecodeRequest:
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    return DecodeRequest(audio=audio, options=OPTS, kind=kind)


class Recording(FakeEngine):
    """FakeEngine that records the kinds of each batch."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.kinds: list[list[str]] = []

    def decode_batch(self, requests):
        self.kinds.append([r.kind for r in requests])
        return super().decode_batch(requests)


async def _started(engine, **kw) -> Scheduler:
    s = Scheduler(engine, **kw)
    await s.start()
    return s


async def test_no_request_lost_under_concurrency():
    engine = FakeEngine(base_ms=2, per_item_ms=0.5)
    sched = await _started(engine, max_batch_size=8, batch_window_ms=2, max_queue=1000)
    try:
        async def one(i):
            await asyncio.sleep((i % 7) * 0.001)
            req = _req(0.6, seed=i)
            result = await sched.submit(req, stream_key=f"s{i}").future
            assert result == engine.transcribe(req.audio)
            return i

        done = await asyncio.gather(*(one(i) for i in range(200)))
        assert sorted(done) == list(range(200))
        assert sum(engine.calls) == 200
        assert max(engine.calls) <= 8 and max(engine.calls) > 1
        assert sched.stats.completed == 200 and sched.queue_length == 0
    finally:
        await sched.stop()


async def test_batch_failure_fails_its_partials_and_decodes_its_finals_again_alone():
    class PoisonedByCompany(FakeEngine):
        """Fails any call with more than one request (e.g. memory for the longest member)."""

        def decode_batch(self, requests):
            if len(requests) > 1:
                self.calls.append(len(requests))
                raise RuntimeError("CUDA error: device-side assert")
            return super().decode_batch(requests)

    engine = PoisonedByCompany(0, 0)
    sched = await _started(engine, max_batch_size=4, batch_window_ms=50)
    try:
        reqs = [_req(0.3, kind=k, seed=i) for i, k in enumerate(["final", "partial", "final", "partial"])]
        tickets = [sched.submit(r, stream_key=i) for i, r in enumerate(reqs)]
        results = await asyncio.gather(*(t.future for t in tickets), return_exceptions=True)
        assert engine.calls == [4, 1, 1]  # the batch, then each final alone
        for req, res in zip(reqs, results, strict=True):
            if req.kind == "final":
                assert res == engine.transcribe(req.audio)
            else:
                assert isinstance(res, InferenceFailed) and "device-side assert" in res.message
        assert sched.stats.retried == 2 and sched.stats.failed == 2
    finally:
        await sched.stop()


async def test_a_final_that_fails_alone_too_resolves_to_inference_failed():
    class Broken(FakeEngine):
        def decode_batch(self, requests):
            self.calls.append(len(requests))
            raise RuntimeError("CUDA error: device-side assert")

    engine = Broken(0, 0)
    sched = await _started(engine, max_batch_size=4, batch_window_ms=50)
    try:
        tickets = [sched.submit(_req(0.3, seed=i), stream_key=i) for i in range(4)]
        results = await asyncio.gather(*(t.future for t in tickets), return_exceptions=True)
        assert engine.calls == [4, 1, 1, 1, 1]
        assert all(isinstance(r, InferenceFailed) for r in results)
        assert all("device-side assert" in r.message for r in results)
        # The scheduler keeps serving after a failure.
        engine.decode_batch = FakeEngine(0, 0).decode_batch
        assert isinstance(await sched.submit(_req(0.3)).future, DecodeResult)
    finally:
        await sched.stop()


async def test_wrong_result_count_fails_the_batch():
    class Short(FakeEngine):
        def decode_batch(self, requests):
            return super().decode_batch(requests)[:-1]

    sched = await _started(Short(0, 0), max_batch_size=3, batch_window_ms=50)
    try:
        tickets = [sched.submit(_req(0.3, kind="partial", seed=i)) for i in range(3)]
        results = await asyncio.gather(*(t.future for t in tickets), return_exceptions=True)
        assert all(isinstance(r, InferenceFailed) and "2 results for a batch of 3" in r.message
                   for r in results)
    finally:
        await sched.stop()


async def test_partials_of_one_stream_all_run():
    # At most one partial per stream is the session's rule; the scheduler runs what it gets.
    engine = Recording(base_ms=30, per_item_ms=0)
    sched = await _started(engine, max_batch_size=8, batch_window_ms=0)
    try:
        blocker = sched.submit(_req(0.2, seed=99), stream_key="other")
        await asyncio.sleep(0.005)
        partials = [sched.submit(_req(0.2 * (i + 1), kind="partial", seed=i), stream_key="s")
                    for i in range(3)]
        assert sched.queue_length == 3
        results = await asyncio.gather(*(t.future for t in partials))
        assert all(isinstance(r, DecodeResult) for r in results)
        await blocker.future
        assert engine.kinds[-1] == ["partial"] * 3
    finally:
        await sched.stop()


async def test_finals_go_before_partials():
    engine = Recording(base_ms=30, per_item_ms=0)
    sched = await _started(engine, max_batch_size=2, batch_window_ms=0)
    try:
        blocker = sched.submit(_req(0.2), stream_key="b")
        await asyncio.sleep(0.005)
        ps = [sched.submit(_req(0.2, kind="partial", seed=i), stream_key=f"p{i}") for i in range(2)]
        fs = [sched.submit(_req(0.2, kind="final", seed=i), stream_key=f"f{i}") for i in range(2)]
        await asyncio.gather(blocker.future, *(t.future for t in ps + fs))
        assert engine.kinds[1:] == [["final", "final"], ["partial", "partial"]]
    finally:
        await sched.stop()


async def test_bounded_queue_refuses_with_overloaded():
    sched = await _started(FakeEngine(base_ms=50, per_item_ms=0), max_batch_size=1,
                           batch_window_ms=0, max_queue=3)
    try:
        first = sched.submit(_req(0.2))
        await asyncio.sleep(0.01)  # first is running now
        queued = [sched.submit(_req(0.2, seed=i)) for i in range(3)]
        with pytest.raises(Overloaded) as info:
            sched.submit(_req(0.2))
        assert info.value.retryable
        with pytest.raises(Overloaded):
            sched.submit(_req(0.2, kind="partial"), stream_key="s")  # partials queue too
        assert sched.stats.refused == 2
        assert sched.queue_length == 3
        await asyncio.gather(first.future, *(t.future for t in queued))
        sched.submit(_req(0.2))  # room again
    finally:
        await sched.stop()


async def test_batch_size_and_window_respected():
    engine = FakeEngine(base_ms=0, per_item_ms=0)
    sched = await _started(engine, max_batch_size=4, batch_window_ms=80)
    try:
        t0 = time.monotonic()
        await sched.submit(_req(0.2)).future
        waited = time.monotonic() - t0
        assert 0.07 <= waited < 0.5, "a lone request waits for the batch window"
        t0 = time.monotonic()
        tickets = [sched.submit(_req(0.2, seed=i)) for i in range(4)]
        await asyncio.gather(*(t.future for t in tickets))
        assert time.monotonic() - t0 < 0.07, "a full batch does not wait for the window"
        tickets = [sched.submit(_req(0.2, seed=i)) for i in range(10)]
        await asyncio.gather(*(t.future for t in tickets))
        assert engine.calls[-3:] == [4, 4, 2]
    finally:
        await sched.stop()


async def test_batching_off_is_batch_size_one():
    engine = FakeEngine(base_ms=1, per_item_ms=0)
    sched = await _started(engine, max_batch_size=1, batch_window_ms=0)
    try:
        await asyncio.gather(*(sched.submit(_req(0.2, seed=i)).future for i in range(6)))
        assert engine.calls == [1] * 6
    finally:
        await sched.stop()


async def test_cancel_stream_removes_pending_work():
    engine = FakeEngine(base_ms=40, per_item_ms=0)
    sched = await _started(engine, max_batch_size=1, batch_window_ms=0)
    try:
        running = sched.submit(_req(0.2), stream_key="a")
        await asyncio.sleep(0.01)
        assert running.state is TicketState.RUNNING
        gone = [sched.submit(_req(0.2, kind=k), stream_key="a") for k in ("final", "partial")]
        kept = sched.submit(_req(0.2), stream_key="b")
        assert sched.queued_audio_seconds == pytest.approx(0.8)
        assert sched.cancel_stream("a") == 2
        assert all(t.future.cancelled() for t in gone)
        await asyncio.gather(running.future, kept.future)
        assert engine.calls == [1, 1]
    finally:
        await sched.stop()


async def test_metrics_rtf_and_batch_sizes():
    sched = await _started(FakeEngine(base_ms=20, per_item_ms=0), max_batch_size=4, batch_window_ms=5)
    try:
        assert sched.recent_rtf == 0.0
        await asyncio.gather(*(sched.submit(_req(1.0, seed=i)).future for i in range(4)))
        assert list(sched.batch_sizes) == [4]
        assert 0.003 < sched.recent_rtf < 0.05  # ~20 ms for 4 s of audio
    finally:
        await sched.stop()


async def test_engine_runs_only_on_the_batch_thread():
    import threading

    names = set()

    class Where(FakeEngine):
        def decode_batch(self, requests):
            names.add(threading.current_thread().name)
            return super().decode_batch(requests)

    sched = await _started(Where(0, 0), max_batch_size=2, batch_window_ms=1)
    try:
        await sched.warmup()
        await asyncio.gather(*(sched.submit(_req(0.2, seed=i)).future for i in range(6)))
        assert len(names) == 1 and next(iter(names)).startswith("asr-batch")
    finally:
        await sched.stop()


async def test_no_window_wait_once_every_stream_has_queued_work():
    engine = FakeEngine(base_ms=0, per_item_ms=0)
    sched = await _started(engine, max_batch_size=8, batch_window_ms=200, concurrency=lambda: 2)
    try:
        t0 = time.monotonic()
        await sched.submit(_req(0.2)).future
        assert time.monotonic() - t0 >= 0.15  # one of two streams: waits for the other
        t0 = time.monotonic()
        await asyncio.gather(sched.submit(_req(0.2)).future, sched.submit(_req(0.2, seed=1)).future)
        assert time.monotonic() - t0 < 0.1
        assert engine.calls[-1] == 2
    finally:
        await sched.stop()


def test_fake_engine_forces_the_agreed_prefix_of_a_partial():
    engine = FakeEngine(0, 0)
    req = _req(1.0, kind="partial", seed=3)
    full = engine.transcribe(req.audio).text
    assert len(full) == 5
    same = engine.decode_batch([DecodeRequest(req.audio, OPTS, "partial", prefix=full[:2])])[0]
    assert same.text == full
    forced = engine.decode_batch([DecodeRequest(req.audio, OPTS, "partial", prefix="XY")])[0]
    assert forced.text == "XY" + full[2:]
    assert [t.text for t in forced.tokens] == list(full[2:])


# --------------------------------------------------------------------------- iteration level


async def test_short_partial_joins_a_running_final_and_leaves_first():
    engine = SteppingFakeEngine(step_ms=5, per_item_ms=0)
    sched = await _started(engine, max_batch_size=8, batch_window_ms=0)
    assert sched.stepping
    try:
        long_final = sched.submit(_req(5.0, seed=1), stream_key="a")  # 25 syllables: 26 steps
        await asyncio.sleep(0.03)
        assert long_final.state is TicketState.RUNNING
        short = sched.submit(_req(0.4, kind="partial", seed=2), stream_key="b")  # 3 steps
        result = await short.future
        assert result == engine.transcribe(short.request.audio)
        assert not long_final.future.done(), "the partial waited for the final"
        assert await long_final.future == engine.transcribe(long_final.request.audio)
        assert max(engine.steps) == 2 and engine.steps[-1] == 1
        assert 2 in sched.batch_sizes
    finally:
        await sched.stop()


async def test_finals_join_before_partials_when_room_is_short():
    engine = SteppingFakeEngine(step_ms=3, per_item_ms=0)
    sched = await _started(engine, max_batch_size=1, batch_window_ms=0)
    try:
        running = sched.submit(_req(0.6, seed=1), stream_key="x")
        await asyncio.sleep(0.005)
        order: list[str] = []
        partial = sched.submit(_req(0.4, kind="partial", seed=2), stream_key="p")
        final = sched.submit(_req(0.4, seed=3), stream_key="f")
        partial.future.add_done_callback(lambda _f: order.append("partial"))
        final.future.add_done_callback(lambda _f: order.append("final"))
        await asyncio.gather(running.future, partial.future, final.future)
        assert order == ["final", "partial"]
        assert max(engine.steps) == 1  # max_batch_size bounds the running batch
    finally:
        await sched.stop()


async def test_step_failure_fails_every_running_request_and_serving_goes_on():
    class Breaks(SteppingFakeEngine):
        broken = True

        def step(self):
            if self.broken and self.active >= 2:
                self._running.clear()  # a failing engine forgets what was in flight
                raise RuntimeError("CUDA error: out of memory")
            return super().step()

    engine = Breaks(step_ms=2, per_item_ms=0)
    sched = await _started(engine, max_batch_size=4, batch_window_ms=20)
    try:
        kinds = ["partial", "partial", "final"]
        reqs = [_req(1.0, kind=k, seed=i) for i, k in enumerate(kinds)]
        tickets = [sched.submit(r, stream_key=i) for i, r in enumerate(reqs)]
        results = await asyncio.gather(*(t.future for t in tickets), return_exceptions=True)
        # The running partials fail; the final is decoded again alone (one running: no failure).
        assert all(isinstance(r, InferenceFailed) and "out of memory" in r.message for r in results[:2])
        assert results[2] == engine.transcribe(reqs[2].audio)
        assert sched.running == 0 and sched.stats.failed == 2 and sched.stats.retried == 1
        engine.broken = False
        assert isinstance(await sched.submit(_req(0.4)).future, DecodeResult)
    finally:
        await sched.stop()


async def test_stepping_engine_no_request_lost_under_concurrency():
    engine = SteppingFakeEngine(step_ms=0.5, per_item_ms=0.05)
    sched = await _started(engine, max_batch_size=6, batch_window_ms=1, max_queue=1000)
    try:
        async def one(i):
            await asyncio.sleep((i % 5) * 0.003)
            req = _req(0.2 + 0.1 * (i % 4), kind="partial" if i % 3 else "final", seed=i)
            assert await sched.submit(req, stream_key=f"s{i}").future == engine.transcribe(req.audio)

        await asyncio.gather(*(one(i) for i in range(60)))
        assert sched.stats.completed == 60 and sched.queue_length == 0 and sched.running == 0
        assert max(engine.steps) <= 6
    finally:
        await sched.stop()


def test_fake_engines_count_their_work():
    for engine in (FakeEngine(0, 0), SteppingFakeEngine(0, 0)):
        engine.warmup()
        req = _req(1.0, kind="partial", seed=3)
        n = len(engine.transcribe(req.audio).tokens)
        engine.decode_batch([DecodeRequest(req.audio, OPTS, "partial", prefix="XY"), _req(0.6, seed=4)])
        assert engine.work.requests == {"partial": 1, "final": 1}
        assert engine.work.generated_tokens["partial"] == n - 2 + 1  # the tail + the end token
        assert engine.work.prefilled_tokens["partial"] == 2
        assert engine.work.audio_seconds["final"] == pytest.approx(0.6)


async def test_work_queued_while_the_batch_is_full_joins_when_a_slot_frees():
    engine = SteppingFakeEngine(step_ms=3, per_item_ms=0)
    sched = await _started(engine, max_batch_size=2, batch_window_ms=0)
    try:
        short = sched.submit(_req(0.4, seed=1), stream_key="a")  # 3 steps
        long = sched.submit(_req(5.0, seed=2), stream_key="b")  # 26 steps
        await asyncio.sleep(0.002)
        waiting = sched.submit(_req(0.4, kind="partial", seed=3), stream_key="c")  # no room yet
        await short.future
        result = await waiting.future
        assert result == engine.transcribe(waiting.request.audio)
        assert not long.future.done(), "the queued partial waited for the long final"
        await long.future
    finally:
        await sched.stop()
