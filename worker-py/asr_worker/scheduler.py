"""ONE scheduler owns the engine and batches decode work from every session.

Sessions `submit()` a DecodeRequest and get a `Ticket` whose future resolves to
a DecodeResult, to `SUPERSEDED` (a newer partial of the same stream replaced it,
or its segment closed first), or to an `AsrError` (InferenceFailed for the whole
batch). One consumer task builds batches:

- it blocks until the first item arrives, then collects more until
  `batch_window_ms` has passed or `max_batch_size` items are there (it waits on
  an event with a deadline; it never polls);
- finals go before partials; a stream has at most one pending partial: a newer
  one replaces it and the replaced ticket resolves with SUPERSEDED;
- the engine call runs on a single-thread executor: only the batch thread
  touches the model, so engines need no locks;
- the number of results is checked against the number of requests, and a
  failing batch fails every member with InferenceFailed;
- the queue is bounded: `submit` raises Overloaded when `max_queue` items wait.

Batching off is `max_batch_size=1`. `cancel_stream()` removes a closed stream's
pending work. Metrics (queued audio seconds, recent real-time factor, batch
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
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .engine.base import MODEL_SAMPLE_RATE, DecodeRequest, DecodeResult, Engine
from .errors import AsrError, InferenceFailed, InternalError, Overloaded


class _Superseded:
    """Outcome of a partial ticket replaced by a newer one, or dropped."""

    _instance: _Superseded | None = None

    def __new__(cls) -> _Superseded:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SUPERSEDED"


#: The result of a ticket whose work was replaced or dropped; not an error.
SUPERSEDED = _Superseded()


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
    superseded: int = 0
    failed: int = 0
    refused: int = 0
    batches: int = 0


class Scheduler:
    """Batches decode requests from all sessions onto one engine.

    Args:
        engine: the Engine; only this scheduler's executor thread calls it.
        max_batch_size: most requests per engine call (1 = batching off).
        batch_window_ms: after the first item of a batch arrives, how long to
            wait for more before running a partial batch.
        max_queue: most pending (not yet running) requests; `submit` raises
            Overloaded beyond it.
        rtf_window_s: how far back `recent_rtf` looks.
        logger: where batch failures are logged.
        clock: monotonic clock in seconds (injectable for tests).
        concurrency: optional callable giving the number of streams that can
            submit work (the server passes its open stream count); a batch does
            not wait for the window once that many requests are queued, so a
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
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_queue = max_queue
        self.rtf_window_s = rtf_window_s
        self.stats = SchedulerStats()
        #: Sizes of the most recent batches (newest last).
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self._log = logger or logging.getLogger("asr_worker.scheduler")
        self._clock = clock
        self.concurrency = concurrency
        self._finals: collections.deque[Ticket] = collections.deque()
        self._partials: collections.deque[Ticket] = collections.deque()
        self._pending_partial: dict[Hashable, Ticket] = {}
        self._running: list[Ticket] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        # (finished_at, compute_s, audio_s) of recent batches.
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
        """Stop the consumer; pending tickets are cancelled."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for t in [*self._finals, *self._partials]:
            if not t.future.done():
                t.future.cancel()
        self._finals.clear()
        self._partials.clear()
        self._pending_partial.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- submission --------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Pending (not yet running) requests."""
        return len(self._finals) + len(self._partials)

    def submit(self, request: DecodeRequest, *, stream_key: Hashable | None = None) -> Ticket:
        """Queue a request; returns its ticket at once.

        A partial with a stream_key replaces that stream's pending partial (the
        old ticket resolves with SUPERSEDED) and so never needs a new slot.
        Raises Overloaded when `max_queue` requests are already pending.
        """
        loop = asyncio.get_running_loop()
        now = self._clock()
        if request.kind == "partial" and stream_key is not None:
            old = self._pending_partial.get(stream_key)
            if old is not None:
                ticket = Ticket(request, loop.create_future(), stream_key, old.seq, old.enqueued_at)
                self._replace_partial(old, ticket)
                self.stats.submitted += 1
                return ticket
        if self.queue_length >= self.max_queue:
            self.stats.refused += 1
            raise Overloaded(f"inference queue full ({self.max_queue} requests waiting)")
        ticket = Ticket(request, loop.create_future(), stream_key, next(self._seq), now)
        if request.kind == "final":
            self._finals.append(ticket)
        else:
            self._partials.append(ticket)
            if stream_key is not None:
                self._pending_partial[stream_key] = ticket
        self.stats.submitted += 1
        self._wakeup.set()
        return ticket

    def _replace_partial(self, old: Ticket, new: Ticket) -> None:
        idx = self._partials.index(old)
        self._partials[idx] = new
        self._pending_partial[old.stream_key] = new
        self._resolve_superseded(old)

    def _resolve_superseded(self, ticket: Ticket) -> None:
        ticket.state = TicketState.DONE
        self.stats.superseded += 1
        if not ticket.future.done():
            ticket.future.set_result(SUPERSEDED)

    def discard(self, ticket: Ticket) -> bool:
        """Drop a pending ticket (resolves SUPERSEDED); False if already running or done."""
        if ticket.state is not TicketState.PENDING:
            return False
        queue = self._finals if ticket.kind == "final" else self._partials
        try:
            queue.remove(ticket)
        except ValueError:
            return False
        if self._pending_partial.get(ticket.stream_key) is ticket:
            del self._pending_partial[ticket.stream_key]
        self._resolve_superseded(ticket)
        return True

    def cancel_stream(self, stream_key: Hashable) -> int:
        """Remove every pending request of a stream (futures cancelled); returns how many."""
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
        self._pending_partial.pop(stream_key, None)
        return removed

    # -- metrics -----------------------------------------------------------

    @property
    def queued_audio_seconds(self) -> float:
        """Seconds of audio waiting for or in inference."""
        return sum(t.audio_seconds for t in (*self._finals, *self._partials, *self._running))

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
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    def _batch_target(self) -> int:
        if self.concurrency is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self.concurrency()))

    def _take_batch(self) -> list[Ticket]:
        batch: list[Ticket] = []
        while self._finals and len(batch) < self.max_batch_size:
            batch.append(self._finals.popleft())
        while self._partials and len(batch) < self.max_batch_size:
            t = self._partials.popleft()
            if self._pending_partial.get(t.stream_key) is t:
                del self._pending_partial[t.stream_key]
            batch.append(t)
        for t in batch:
            t.state = TicketState.RUNNING
        return batch

    async def _run_batch(self, batch: list[Ticket]) -> None:
        self._running = batch
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
        except Exception as exc:  # fanned out to every member
            err = exc if isinstance(exc, AsrError) else InferenceFailed(
                f"inference failed: {type(exc).__name__}: {exc}"
            )
            if isinstance(err, InternalError):
                err = InferenceFailed(err.message)
            self._log.error(
                "batch failed",
                extra={"batch_size": len(batch), "error": err.message},
            )
            for t in batch:
                t.state = TicketState.DONE
                if not t.future.done():
                    t.future.set_exception(type(err)(err.message))
            self.stats.failed += len(batch)
            return
        finally:
            self._running = []
            self.stats.batches += 1
            self.batch_sizes.append(len(batch))
        finished = self._clock()
        self._recent.append((finished, finished - started, sum(t.audio_seconds for t in batch)))
        self._expire_recent()
        for t, r in zip(batch, results, strict=True):
            t.state = TicketState.DONE
            if not t.future.done():
                t.future.set_result(r)
        self.stats.completed += len(batch)
