"""Prometheus metrics of a worker, over EVERY process of it (`serve --metrics-port`).

A worker may be several processes (an engine process and N front processes, each with its
own numbers), so this uses prometheus_client's multiprocess mode throughout, also when the
worker is one process:

- the process that parses `serve` creates a fresh directory (`MetricsDir`) and exports it
  as PROMETHEUS_MULTIPROC_DIR *before anything imports prometheus_client*: the library
  picks its value storage at import time, and children started afterwards inherit the
  variable, so every process writes its values to its own memory-mapped files there;
- that same process serves `GET /metrics` (`serve_metrics`) with a `MultiProcessCollector`,
  which sums (or, for gauges, combines as each gauge says) the files of every process;
- when a child dies its live gauges are dropped (`MetricsDir.mark_dead`); the directory is
  removed when the worker exits.

Each process builds one `WorkerMetrics` (in its composition root) and hands it to what it
observes: `VadBatcher` (VAD time, audio in), `metered_engine` (a wrapper around the engine
the scheduler drives: batch sizes and engine time per call), and `sample_loop` (streams,
queue depth, the engine's decoder token counters, CUDA memory), so none of those modules
imports this one. Every metric is listed in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from .engine.base import MODEL_SAMPLE_RATE, DecodeRequest, DecodeResult, SteppingEngine

#: The variable prometheus_client reads (at import time) to store values in files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Requests per engine call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Seconds per engine call or VAD batch: sub-millisecond steps to multi-second CPU batches.
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsDir:
    """The worker's PROMETHEUS_MULTIPROC_DIR: created fresh, exported, removed at exit.

    Create it in the worker's first process before prometheus_client is imported there
    (and before any child starts); `close()` removes it and the variable.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="asr-worker-metrics-")
        os.environ[MULTIPROC_ENV] = self.path

    def mark_dead(self, pid: int) -> None:
        """Drops the live gauges of a child that exited (its counters stay in the sums)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)

    def close(self) -> None:
        """Removes the directory (at worker exit)."""
        if os.environ.get(MULTIPROC_ENV) == self.path:
            del os.environ[MULTIPROC_ENV]
        shutil.rmtree(self.path, ignore_errors=True)


def serve_metrics(path: str, host: str, port: int) -> tuple[Any, int]:
    """Serves GET /metrics on host:port (0 = any) from every process's files in `path`.

    Returns the server (call `shutdown()` to stop it) and its bound port. The server runs
    on a daemon thread of this process.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port


class WorkerMetrics:
    """One process's metrics (see the module doc). Requires PROMETHEUS_MULTIPROC_DIR.

    Args:
        role: what this process is ("worker" for a single-process worker, "engine",
            "front"): label of asr_worker_processes.
    """

    def __init__(self, role: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        if not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                f"{MULTIPROC_ENV} must be set before prometheus_client is imported "
                "(create MetricsDir first): values would not reach the scrape"
            )
        # registry=None: in multiprocess mode values live in files, collected at scrape
        # time by the serving process; nothing is registered in a module-level registry.
        self.role = role
        self.processes = Gauge(
            "asr_worker_processes", "Live worker processes, by role (one series per process: pid label)",
            ["role"], registry=None, multiprocess_mode="liveall",
        )
        self.processes.labels(role).set(1)
        self.streams = Gauge(
            "asr_worker_streams", "Streams (gRPC StreamingRecognize calls) admitted now",
            registry=None, multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "asr_worker_queue_depth", "Decode requests waiting for the engine (not yet running)",
            registry=None, multiprocess_mode="livesum",
        )
        self.running = Gauge(
            "asr_worker_running_requests", "Decode requests in the engine now",
            registry=None, multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "asr_worker_batch_size",
            "Requests per engine call (a decode_batch, an add_requests, or a decoder step)", ["call"],
            buckets=BATCH_BUCKETS, registry=None,
        )
        self.engine_seconds = Histogram(
            "asr_worker_engine_seconds",
            "Wall time of one engine call, by call and by the kinds of its requests (final, partial, mixed)",
            ["call", "kind"], buckets=SECONDS_BUCKETS, registry=None,
        )
        self.vad_seconds = Histogram(
            "asr_worker_vad_seconds", "Wall time of one batched VAD call (all streams' windows together)",
            buckets=SECONDS_BUCKETS, registry=None,
        )
        self.vad_windows = Counter(
            "asr_worker_vad_windows", "VAD windows scored", registry=None,
        )
        self.audio_seconds = Counter(
            "asr_worker_audio_seconds",
            "Seconds of audio received from streams (at 16 kHz, as scored by the VAD)", registry=None,
        )
        self.generated_tokens = Counter(
            "asr_worker_decoder_generated_tokens",
            "Decoder tokens generated (stop tokens included), by request kind", ["kind"], registry=None,
        )
        self.prefilled_tokens = Counter(
            "asr_worker_decoder_prefilled_tokens",
            "Decoder tokens prefilled (prompt, audio frames, forced prefix, draft), by request kind",
            ["kind"], registry=None,
        )
        self.draft_proposed = Counter(
            "asr_worker_decoder_draft_proposed_tokens",
            "Draft tokens (the segment's previous answer) prefilled for verification, by request kind",
            ["kind"], registry=None,
        )
        self.draft_accepted = Counter(
            "asr_worker_decoder_draft_accepted_tokens",
            "Draft tokens the decoder accepted (answer tokens that cost no decoder step), by request kind",
            ["kind"], registry=None,
        )
        self.gpu_memory = Gauge(
            "asr_worker_gpu_memory_bytes",
            "CUDA memory of the engine's device held by torch (allocated, reserved)", ["device", "type"],
            registry=None, multiprocess_mode="livesum",
        )
        self._work_seen: dict[tuple[str, str], float] = {}

    # -- hooks (called by the observed modules) -----------------------------------------

    def vad_batch(self, seconds: float, streams: int, windows: int) -> None:
        """One batched VAD call took `seconds` for `windows` windows of `streams` streams."""
        self.vad_seconds.observe(seconds)
        self.vad_windows.inc(windows)

    def audio_in(self, samples: int) -> None:
        """A stream delivered `samples` samples at 16 kHz."""
        self.audio_seconds.inc(samples / MODEL_SAMPLE_RATE)

    def engine_call(self, call: str, kinds: Sequence[str], seconds: float) -> None:
        """One engine call (`call`) on requests of `kinds` took `seconds`."""
        self.batch_size.labels(call).observe(len(kinds))
        self.engine_seconds.labels(call, _kind_of(kinds)).observe(seconds)

    def sample(
        self,
        *,
        streams: int | None = None,
        queued: int | None = None,
        running: int | None = None,
        engine: Any = None,
        device: str | None = None,
    ) -> None:
        """Sets the gauges and catches the counters up with the engine's own (`engine.work`)."""
        if streams is not None:
            self.streams.set(streams)
        if queued is not None:
            self.queue_depth.set(queued)
        if running is not None:
            self.running.set(running)
        work = getattr(engine, "work", None)
        if work is not None:
            self._catch_up(self.generated_tokens, "generated", getattr(work, "generated_tokens", {}))
            self._catch_up(self.prefilled_tokens, "prefilled", getattr(work, "prefilled_tokens", {}))
            self._catch_up(self.draft_proposed, "draft_proposed", getattr(work, "draft_proposed", {}))
            self._catch_up(self.draft_accepted, "draft_accepted", getattr(work, "draft_accepted", {}))
        if device is not None and device.startswith("cuda"):
            import torch

            self.gpu_memory.labels(device, "allocated").set(torch.cuda.memory_allocated(device))
            self.gpu_memory.labels(device, "reserved").set(torch.cuda.memory_reserved(device))

    def _catch_up(self, counter: Any, what: str, totals: dict[str, float]) -> None:
        # The engine's counters are cumulative; a Prometheus counter only goes up by deltas.
        for kind, total in totals.items():
            seen = self._work_seen.get((what, kind), 0)
            if total > seen:
                counter.labels(kind).inc(total - seen)
            self._work_seen[(what, kind)] = total


def _kind_of(kinds: Sequence[str]) -> str:
    distinct = set(kinds)
    return distinct.pop() if len(distinct) == 1 else ("mixed" if distinct else "none")


async def sample_loop(metrics: WorkerMetrics, sample: Callable[[], None], interval_s: float = 1.0) -> None:
    """Calls `sample` (which calls `metrics.sample(...)`) every `interval_s` until cancelled."""
    log = logging.getLogger("asr_worker.metrics")
    while True:
        try:
            sample()
        except Exception:  # a metrics failure must never take the worker down
            log.exception("metrics sample failed")
        await asyncio.sleep(interval_s)


def start_engine_sampler(
    metrics: WorkerMetrics, *, scheduler: Any, admission: Any, engine: Any, interval_s: float = 1.0
) -> asyncio.Task:
    """In the process that owns the scheduler: samples streams (worker-wide admission), queue
    depth, running requests, the engine's decoder counters and CUDA memory every `interval_s`.
    Cancel the task to stop it."""
    device = str(getattr(engine, "device", "cpu"))

    def sample() -> None:
        running = getattr(scheduler, "running", None)
        metrics.sample(
            streams=admission.active, queued=scheduler.queue_length,
            running=running if isinstance(running, int) else None, engine=engine, device=device,
        )

    loop = asyncio.get_running_loop()
    return loop.create_task(sample_loop(metrics, sample, interval_s), name="metrics-sampler")


class MeteredEngine:
    """An Engine (decode_batch) whose calls are timed into `metrics`; all else is the engine's."""

    def __init__(self, engine: Any, metrics: WorkerMetrics) -> None:
        self._engine = engine
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """The engine's decode_batch, timed."""
        t0 = time.perf_counter()
        try:
            return self._engine.decode_batch(requests)
        finally:
            self._metrics.engine_call("decode_batch", [r.kind for r in requests], time.perf_counter() - t0)


class MeteredSteppingEngine(MeteredEngine):
    """A SteppingEngine whose add_requests and step calls are timed into `metrics`."""

    def __init__(self, engine: Any, metrics: WorkerMetrics) -> None:
        super().__init__(engine, metrics)
        self._kinds: dict[int, str] = {}

    @property
    def active(self) -> int:
        """The engine's running requests."""
        return self._engine.active

    def add_requests(self, requests: Sequence[DecodeRequest]) -> list[int]:
        """The engine's add_requests (encode + prefill), timed."""
        t0 = time.perf_counter()
        try:
            handles = self._engine.add_requests(requests)
        finally:
            self._metrics.engine_call("add_requests", [r.kind for r in requests], time.perf_counter() - t0)
        self._kinds.update(zip(handles, (r.kind for r in requests), strict=False))
        return handles

    def step(self) -> list[tuple[int, DecodeResult]]:
        """One decoder step, timed with the kinds of every request it advanced."""
        kinds = list(self._kinds.values())
        t0 = time.perf_counter()
        try:
            done = self._engine.step()
        except Exception:
            self._kinds.clear()  # the engine forgot everything in flight
            raise
        finally:
            self._metrics.engine_call("step", kinds, time.perf_counter() - t0)
        for handle, _ in done:
            self._kinds.pop(handle, None)
        return done


def metered_engine(engine: Any, metrics: WorkerMetrics) -> Any:
    """`engine` wrapped so its calls are timed; iteration-level engines stay iteration-level."""
    if isinstance(engine, SteppingEngine):
        return MeteredSteppingEngine(engine, metrics)
    return MeteredEngine(engine, metrics)
