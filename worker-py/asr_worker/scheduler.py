"""ONE scheduler owns the engine and batches decode work from every session.

Sessions `submit()` a DecodeRequest and get a `Ticket` whose future resolves to a
DecodeResult or to an `AsrError` (InferenceFailed when the engine call failed). The
scheduler is a plain two-priority queue: finals go before partials, and otherwise
requests run in arrival order. It does not decide which partials are worth running:
the session alone keeps at most one partial per stream in flight.

One consumer task drives the engine on a single-thread executor (only the batch thread
touches the model, so engines need no locks), in one of two ways:

- an engine with iteration-level decoding (`SteppingEngine`: add_requests / step) runs
  continuously: between decoder steps, queued requests join the running batch up to
  `max_batch_size` (finals first) once the oldest has waited `batch_window_ms` (so one
  prefill serves several newcomers) or they fill the room, and each result is delivered
  the moment its request finishes, so a short partial never waits for a long final;
- any other engine gets whole batches (`decode_batch`): after the first request arrives
  the consumer collects more until `batch_window_ms` has passed or `max_batch_size` are
  there (it waits on an event with a deadline; it never polls).

When nothing is running, both wait up to `batch_window_ms` for a fuller first batch
(unless every open stream already has work queued). The number of results is checked
against the number of requests. When an engine call fails, its partials fail with
InferenceFailed and each of its finals is decoded once more alone (a final is owed to the
client; most failures are transient or another member's fault); only a final that fails
alone too resolves to InferenceFailed. The queue is bounded: `submit` raises Overloaded when `max_queue`
requests wait. Batching off is `max_batch_size=1`. `cancel_stream()` removes a closed
stream's pending work. Metrics (queued audio seconds, recent real-time factor, batch
sizes) feed LoadReport and benchmarks.

Usable directly from Python (benchmarks drive it in-process)::

    sched = Scheduler(FakeEngine(20, 5), max_batch_size=8, batch_window_ms=10)
    await sched.start()
    ticket = sched.submit(DecodeRequest(audio, DecodeOptions()), stream_key="s1")
    result = await ticket.future
    await sched.stop()
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine.base import MODEL_SAMPLE_RATE, DecodeRequest, DecodeResult, Engine, SteppingEngine
from .errors import AsrError, InferenceFailed, InternalError, Overloaded

#: Most decoder steps per batch-thread call while nothing finishes and nothing is queued.
_STEPS_PER_CALL = 16


class TicketState(enum.Enum):
    """Where a ticket is."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class Ticket:
    """One submitted decode: the request and the future of its outcome."""

    request: DecodeRequest
    future: asyncio.Future
    stream_key: Hashable | None
    seq: int
    enqueued_at: float
    state: TicketState = TicketState.PENDING
    #: Seconds of audio in the request.
    audio_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.audio_seconds = len(self.request.audio) / MODEL_SAMPLE_RATE
        # A failed ticket whose session is gone must not log "exception never retrieved".
        self.future.add_done_callback(_mark_retrieved)

    @property
    def kind(self) -> str:
        """"final" or "partial"."""
        return self.request.kind


def _mark_retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


@dataclass
class SchedulerStats:
    """Counters since start."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    refused: int = 0
    #: Engine calls: whole batches, or iterations (admit + one decoder step) of a SteppingEngine.
    batches: int = 0
    #: Finals decoded again alone after the engine call they were in failed.
    retried: int = 0


class Scheduler:
    """Runs decode requests from all sessions on one engine, finals before partials.

    Args:
        engine: the Engine; only this scheduler's executor thread calls it. A
            SteppingEngine is driven at iteration level (see the module doc).
        max_batch_size: most requests decoding together (1 = batching off).
        batch_window_ms: when nothing is running, how long to wait after the first
            request for more before starting.
        max_queue: most pending (not yet running) requests; `submit` raises
            Overloaded beyond it.
        rtf_window_s: how far back `recent_rtf` looks.
        logger: where engine failures are logged.
        clock: monotonic clock in seconds (injectable for tests).
        concurrency: optional callable giving the number of streams that can
            submit work (the server passes its open stream count); a first batch
            does not wait for the window once that many requests are queued, so a
            lone stream pays no batching delay.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int = 8,
        batch_window_ms: float = 10.0,
        max_queue: int = 256,
        rtf_window_s: float = 10.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        concurrency: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if batch_window_ms < 0:
            raise ValueError("batch_window_ms must be >= 0")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.engine = engine
        #: Whether the engine is driven at iteration level (add_requests / step).
        self.stepping = isinstance(engine, SteppingEngine)
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_queue = max_queue
        self.rtf_window_s = rtf_window_s
        self.stats = SchedulerStats()
        #: Requests per engine call, newest last: batch sizes, or for a SteppingEngine the
        #: requests decoding in each step.
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self._log = logger or logging.getLogger("asr_worker.scheduler")
        self._clock = clock
        self.concurrency = concurrency
        self._finals: collections.deque[Ticket] = collections.deque()
        self._partials: collections.deque[Ticket] = collections.deque()
        self._running: dict[int, Ticket] = {}  # by engine handle (batch mode: by position)
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        # Set by submit, read by the batch thread: queued work ends a run of decoder steps
        # once its batch window (`_join_at`, scheduler clock) has passed.
        self._work_queued = threading.Event()
        self._join_at = 0.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        # (finished_at, compute_s, audio_s) of recent engine calls.
        self._recent: collections.deque[tuple[float, float, float]] = collections.deque()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create the batch thread and start the consumer task."""
        if self._task is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="asr-batch"
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="asr-scheduler")

    async def run_on_engine_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the batch thread (warmup, engine loading)."""
        if self._executor is None:
            raise RuntimeError("scheduler not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def warmup(self) -> None:
        """engine.warmup() on the batch thread."""
        await self.run_on_engine_thread(self.engine.warmup)

    async def stop(self) -> None:
        """Stop the consumer; pending and running tickets are cancelled."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for t in [*self._finals, *self._partials, *self._running.values()]:
            if not t.future.done():
                t.future.cancel()
        self._finals.clear()
        self._partials.clear()
        self._running.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- submission --------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Pending (not yet running) requests."""
        return len(self._finals) + len(self._partials)

    @property
    def running(self) -> int:
        """Requests the engine is decoding now."""
        return len(self._running)

    def submit(self, request: DecodeRequest, *, stream_key: Hashable | None = None) -> Ticket:
        """Queue a request; returns its ticket at once.

        Raises Overloaded when `max_queue` requests are already pending.
        """
        loop = asyncio.get_running_loop()
        if self.queue_length >= self.max_queue:
            self.stats.refused += 1
            raise Overloaded(f"inference queue full ({self.max_queue} requests waiting)")
        ticket = Ticket(request, loop.create_future(), stream_key, next(self._seq), self._clock())
        (self._finals if request.kind == "final" else self._partials).append(ticket)
        self.stats.submitted += 1
        self._wakeup.set()
        if not self._work_queued.is_set():
            self._join_at = ticket.enqueued_at + self.batch_window_s
            self._work_queued.set()
        return ticket

    def cancel_stream(self, stream_key: Hashable) -> int:
        """Remove every pending request of a stream (futures cancelled); returns how many.

        Requests already decoding finish; their results go to futures nobody awaits.
        """
        removed = 0
        for queue in (self._finals, self._partials):
            keep = [t for t in queue if t.stream_key != stream_key]
            for t in queue:
                if t.stream_key == stream_key:
                    t.state = TicketState.DONE
                    if not t.future.done():
                        t.future.cancel()
                    removed += 1
            queue.clear()
            queue.extend(keep)
        return removed

    # -- metrics -----------------------------------------------------------

    @property
    def queued_audio_seconds(self) -> float:
        """Seconds of audio waiting for or in inference."""
        return sum(t.audio_seconds for t in (*self._finals, *self._partials, *self._running.values()))

    @property
    def recent_rtf(self) -> float:
        """Compute seconds per audio second over the last `rtf_window_s`; 0 when idle."""
        self._expire_recent()
        compute = sum(c for _, c, _ in self._recent)
        audio = sum(a for _, _, a in self._recent)
        return compute / audio if audio > 0 else 0.0

    def _expire_recent(self) -> None:
        horizon = self._clock() - self.rtf_window_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()

    # -- the consumer ------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._running:
                await self._gather_first_batch()
            room = self.max_batch_size - len(self._running)
            batch = self._take(room) if not self._running or self._join_due(room) else []
            if self.stepping:
                await self._iterate(batch)
            elif batch:
                await self._run_batch(batch)

    async def _gather_first_batch(self) -> None:
        """Wait for work, then up to the batch window for a fuller batch."""
        while self.queue_length == 0:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._clock() + self.batch_window_s
        while self.queue_length < self._batch_target():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break

    def _batch_target(self) -> int:
        if self.concurrency is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.concurrency()))

    def _join_due(self, room: int) -> bool:
        """Whether queued work joins a running batch now: the batch window applies to
        joins too, so that one prefill serves several newcomers, unless they fill the room."""
        if room <= 0 or not self.queue_length:
            return False
        return self.queue_length >= room or self._clock() >= self._oldest_queued() + self.batch_window_s

    def _oldest_queued(self) -> float:
        return min(q[0].enqueued_at for q in (self._finals, self._partials) if q)

    def _take(self, room: int) -> list[Ticket]:
        """Up to `room` pending tickets, finals first, each queue in arrival order."""
        batch: list[Ticket] = []
        for queue in (self._finals, self._partials):
            while queue and len(batch) < room:
                batch.append(queue.popleft())
        for t in batch:
            t.state = TicketState.RUNNING
        return batch

    async def _iterate(self, joining: list[Ticket]) -> None:
        """One SteppingEngine iteration: new requests join, every running one steps."""
        loop = asyncio.get_running_loop()
        started = self._clock()
        requests = [t.request for t in joining]
        room = len(self._running) + len(joining) < self.max_batch_size
        if not room or not self.queue_length:
            self._work_queued.clear()  # nothing more can join: let the steps run on
        else:  # queued work joins once its window has passed (it may predate a full batch)
            self._join_at = self._oldest_queued() + self.batch_window_s
            self._work_queued.set()
        try:
            handles, finished = await loop.run_in_executor(self._executor, self._engine_iteration, requests)
        except asyncio.CancelledError:
            for t in joining:
                if not t.future.done():
                    t.future.cancel()
            raise
        except Exception as exc:  # the engine forgot everything in flight
            failed = [*self._running.values(), *joining]
            self._running.clear()
            await self._after_failure(failed, exc)
            return
        finally:
            self.stats.batches += 1
        self._running.update(zip(handles, joining, strict=True))
        self.batch_sizes.append(len(self._running))
        done = []
        for handle, result in finished:
            t = self._running.pop(handle, None)
            if t is not None:
                done.append((t, result))
        finished_at = self._clock()
        self._recent.append((finished_at, finished_at - started, sum(t.audio_seconds for t, _ in done)))
        self._expire_recent()
        for t, result in done:
            self._resolve(t, result)

    def _engine_iteration(
        self, requests: Sequence[DecodeRequest]
    ) -> tuple[list[int], list[tuple[int, DecodeResult]]]:
        """On the batch thread: add the new requests, then decoder steps.

        Steps go on without a round trip through the event loop until a request
        finishes (its result is delivered at once), queued work is due to join (its batch
        window has passed), or `_STEPS_PER_CALL` steps have run.
        """
        engine = self.engine
        assert isinstance(engine, SteppingEngine)
        handles = engine.add_requests(requests) if requests else []
        if len(handles) != len(requests):
            raise InternalError(f"engine returned {len(handles)} handles for {len(requests)} requests")
        for _ in range(_STEPS_PER_CALL):
            finished = engine.step()
            if finished or not engine.active:
                break
            if self._work_queued.is_set() and self._clock() >= self._join_at:
                break
        return handles, finished

    async def _run_batch(self, batch: list[Ticket]) -> None:
        self._running = dict(enumerate(batch))
        requests = [t.request for t in batch]
        started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            results: list[DecodeResult] = await loop.run_in_executor(
                self._executor, self.engine.decode_batch, requests
            )
            if not isinstance(results, list) or len(results) != len(requests):
                got = len(results) if hasattr(results, "__len__") else "?"
                raise InternalError(
                    f"engine returned {got} results for a batch of {len(requests)}"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            self._running = {}
            self.stats.batches += 1
            self.batch_sizes.append(len(batch))
        if failure is not None:
            await self._after_failure(batch, failure)
            return
        finished = self._clock()
        self._recent.append((finished, finished - started, sum(t.audio_seconds for t in batch)))
        self._expire_recent()
        for t, r in zip(batch, results, strict=True):
            self._resolve(t, r)

    async def _after_failure(self, tickets: list[Ticket], exc: Exception) -> None:
        """A failed engine call: its partials fail (the session schedules the next one), and
        each final is decoded once more ALONE before it may fail.

        A final is owed to the client (exactly one per accepted segment), and most batch
        failures are not the final's own fault: a transient device error, or another member
        that poisons the batch (an odd input, memory for the longest request). Alone, a
        healthy final then succeeds and only a request that fails by itself is lost.
        """
        finals = [t for t in tickets if t.kind == "final" and not t.future.done()]
        self._fail([t for t in tickets if t not in finals], exc)
        if not finals:
            return
        self._log.warning("batch failed; decoding its finals again one by one",
                          extra={"finals": len(finals), "error": f"{type(exc).__name__}: {exc}"})
        loop = asyncio.get_running_loop()
        for t in finals:
            if t.future.done():  # cancelled while an earlier retry ran
                continue
            self.stats.retried += 1
            try:
                results = await loop.run_in_executor(self._executor, self.engine.decode_batch, [t.request])
                if not isinstance(results, list) or len(results) != 1:
                    raise InternalError("engine returned a wrong number of results for one request")
            except asyncio.CancelledError:
                raise
            except Exception as again:
                self._fail([t], again)
                continue
            finally:
                self.stats.batches += 1
                self.batch_sizes.append(1)
            self._resolve(t, results[0])

    def _resolve(self, ticket: Ticket, result: DecodeResult) -> None:
        ticket.state = TicketState.DONE
        if not ticket.future.done():
            ticket.future.set_result(result)
        self.stats.completed += 1

    def _fail(self, tickets: list[Ticket], exc: Exception) -> None:
        err = exc if isinstance(exc, AsrError) else InferenceFailed(
            f"inference failed: {type(exc).__name__}: {exc}"
        )
        if isinstance(err, InternalError):
            err = InferenceFailed(err.message)
        self._log.error("batch failed", extra={"batch_size": len(tickets), "error": err.message})
        for t in tickets:
            t.state = TicketState.DONE
            if not t.future.done():
                t.future.set_exception(type(err)(err.message))
        self.stats.failed += len(tickets)
