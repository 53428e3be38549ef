"""The grpc.aio server: asr.v1.Asr, grpc.health.v1, admission and drain.

`AsrService` implements the contract (proto/asr/v1/asr.proto): one Session per
StreamingRecognize call, load reports for WatchLoad. `WorkerServer` binds the
port, serves health ("" and "asr.v1.Asr": NOT_SERVING until `mark_ready()`,
NOT_SERVING again while draining) and drains:

1. `drain()` sets accepting=false and NOT_SERVING, tells WatchLoad watchers,
   and refuses new calls with UNAVAILABLE;
2. open streams may finish for up to `drain_grace_s`;
3. the rest end with UNAVAILABLE (retryable: the gateway replays them with
   StreamingConfig.resume elsewhere), then the server stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from asr.v1 import asr_pb2, asr_pb2_grpc

from .errors import AsrError, Draining, InternalError, InvalidConfig
from .log import SessionLogger
from .scheduler import Scheduler
from .session import Session, SessionOptions, validate_config
from .vad import VadBatcher, VadModel

#: Health service names that follow readiness.
HEALTH_SERVICES = ("", "asr.v1.Asr")
#: Largest request message accepted: a 4 MiB audio chunk plus framing.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 64 * 1024


@dataclass(frozen=True)
class ServiceConfig:
    """Worker-level limits of the Asr service."""

    #: Streams admitted at once; more get RESOURCE_EXHAUSTED.
    max_streams: int = 64
    #: Stable id reported in LoadReport (host:port or pod name).
    worker_id: str = ""
    #: Per-session settings.
    session: SessionOptions = field(default_factory=SessionOptions)


class AsrService(asr_pb2_grpc.AsrServicer):
    """The asr.v1.Asr servicer.

    Args:
        scheduler: the one Scheduler (owns the engine).
        vad: shared silero weights.
        engine_name: reported in LoadReport.engine.
        config: limits and session settings.
        logger: the worker's logger.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        vad: VadModel,
        engine_name: str,
        config: ServiceConfig,
        logger: logging.Logger,
    ) -> None:
        self._sched = scheduler
        self._vad = vad
        self._engine_name = engine_name
        self.config = config
        self._log = logger
        self.ready = False
        self.draining = False
        self.active_streams = 0
        self._ids = itertools.count(1)
        self._kills: dict[int, Callable[[AsrError], None]] = {}
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        if scheduler.concurrency is None:
            scheduler.concurrency = lambda: self.active_streams
        self._vad_exec = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="asr-vad"
        )
        #: Scores all streams' VAD windows together on the VAD thread.
        self.vad_batcher = VadBatcher(vad, self._vad_exec)

    # -- admission and load ------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether a new stream would be admitted."""
        return self.ready and not self.draining and self.active_streams < self.config.max_streams

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def set_ready(self, ready: bool) -> None:
        """Admission opens once the engine is warm."""
        self.ready = ready
        self._notify()

    def start_draining(self) -> None:
        """Refuse new streams from now on."""
        self.draining = True
        self._notify()

    def load_report(self) -> asr_pb2.LoadReport:
        """A snapshot of this worker's load."""
        return asr_pb2.LoadReport(
            worker_id=self.config.worker_id,
            active_streams=self.active_streams,
            max_streams=self.config.max_streams,
            queued_audio_seconds=self._sched.queued_audio_seconds,
            accepting=self.accepting,
            engine=self._engine_name,
            recent_rtf=self._sched.recent_rtf,
        )

    async def wait_idle(self, within_s: float) -> bool:
        """Wait until no stream is open; False if streams remain after `within_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
            return True
        except TimeoutError:
            return self.active_streams == 0

    def kill_all(self, err: AsrError) -> int:
        """End every open stream with `err`; returns how many."""
        kills = list(self._kills.values())
        for kill in kills:
            kill(err)
        return len(kills)

    def start(self) -> None:
        """Start background work (the VAD batcher) on the running loop."""
        self.vad_batcher.start()

    async def shutdown(self) -> None:
        """Stop the VAD batcher and release its thread."""
        await self.vad_batcher.stop()
        self._vad_exec.shutdown(wait=False, cancel_futures=True)

    # -- RPCs --------------------------------------------------------------

    async def WatchLoad(  # noqa: N802 - gRPC method name
        self, request: asr_pb2.WatchLoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.LoadReport]:
        """One report at once, then one per interval and on every admission change."""
        interval = min(max(request.interval_ms or 1000, 100), 60_000) / 1000.0
        while True:
            changed = self._changed
            yield self.load_report()
            try:
                await asyncio.wait_for(changed.wait(), interval)
            except TimeoutError:
                pass

    async def StreamingRecognize(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        """One recognition session; see the proto for the rules."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, Draining().message)
        if not self.ready:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "worker is loading the model; retry shortly"
            )
        if self.active_streams >= self.config.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"worker at capacity: {self.active_streams} of {self.config.max_streams} "
                "streams open; retry on another worker",
            )
        call_id = next(self._ids)
        killed: asyncio.Future = asyncio.get_running_loop().create_future()
        session: Session | None = None

        def kill(err: AsrError) -> None:
            if not killed.done():
                killed.set_result(err)
            if session is not None:
                session.fail(err)

        self._kills[call_id] = kill
        self.active_streams += 1
        self._idle.clear()
        if self.active_streams >= self.config.max_streams:
            self._notify()
        log: logging.Logger | logging.LoggerAdapter = SessionLogger(
            self._log, {"call_id": call_id}
        )
        reader: asyncio.Task | None = None
        try:
            it = aiter(request_iterator)
            first_task = asyncio.ensure_future(anext(it))
            await asyncio.wait({first_task, killed}, return_when=asyncio.FIRST_COMPLETED)
            if killed.done():
                first_task.cancel()
                raise killed.result()
            try:
                first = first_task.result()
            except StopAsyncIteration:
                return  # the client half-closed without sending anything
            kind = first.WhichOneof("streaming_request")
            if kind != "config":
                raise InvalidConfig(
                    f"the first request must carry config, got {kind or 'an empty request'}"
                )
            settings = validate_config(first.config, self.config.session)
            log = SessionLogger(
                self._log, {"call_id": call_id, "session_id": settings.session_id}
            )
            session = Session(
                key=call_id,
                settings=settings,
                scheduler=self._sched,
                vad=self._vad,
                options=self.config.session,
                logger=log,
                vad_score=self.vad_batcher.score,
            )
            log.info(
                "stream opened",
                extra={
                    "mode": asr_pb2.RecognitionMode.Name(settings.mode),
                    "sample_rate_hz": settings.sample_rate_hz,
                    "resume_segments": settings.resume_segments,
                },
            )
            reader = asyncio.create_task(self._read(session, it, log))
            async for response in session.responses():
                yield response
            await reader
            log.info("stream finished", extra=session.summary())
        except AsrError as err:
            log.info(
                "stream ended with error",
                extra={"code": asr_pb2.ErrorCode.Name(err.code), "error": err.message},
            )
            await context.abort(err.status, err.message)
        except asyncio.CancelledError:
            log.info("stream cancelled")
            raise
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
            if session is not None:
                session.close()
            del self._kills[call_id]
            was_full = self.active_streams >= self.config.max_streams
            self.active_streams -= 1
            if self.active_streams == 0:
                self._idle.set()
            if was_full:
                self._notify()

    async def _read(
        self,
        session: Session,
        it: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        try:
            async for req in it:
                await session.handle(req)
            await session.finish()
        except AsrError as err:
            session.fail(err)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: end this call only
            log.exception("session failed")
            session.fail(InternalError(f"internal error: {type(exc).__name__}"))


class WorkerServer:
    """The grpc.aio server hosting AsrService and health.

    Args:
        service: the AsrService.
        logger: the worker's logger.
    """

    def __init__(self, service: AsrService, logger: logging.Logger) -> None:
        self.service = service
        self._log = logger
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # A second worker on a taken port must fail, not silently share it.
                ("grpc.so_reuseport", 0),
                # Detect a vanished gateway (half-open TCP) so its sessions are freed...
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # ...and accept gateways' own keepalive pings (every >= 10 s) on idle links.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        asr_pb2_grpc.add_AsrServicer_to_server(service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = 0

    async def start(self, listen: str) -> int:
        """Bind `listen` (HOST:PORT, port 0 = any) and start; returns the bound port."""
        for name in HEALTH_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot bind {listen}")
        await self._server.start()
        self.service.start()
        return self.port

    async def mark_ready(self) -> None:
        """The engine is warm: SERVING, admission open."""
        self.service.set_ready(True)
        for name in HEALTH_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace_s: float) -> None:
        """Stop admitting, let streams finish up to `grace_s`, end the rest, stop."""
        self.service.start_draining()
        for name in HEALTH_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        open_streams = self.service.active_streams
        self._log.info("draining", extra={"open_streams": open_streams, "grace_s": grace_s})
        if not await self.service.wait_idle(grace_s):
            n = self.service.kill_all(
                Draining("worker shut down after the drain grace period; resume elsewhere")
            )
            self._log.info("drain grace over; ending streams", extra={"ended": n})
            await self.service.wait_idle(2.0)
        await self.stop(grace_s=1.0)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving at once (or within grace_s)."""
        await self._server.stop(grace_s)
        await self.service.shutdown()

    async def wait_for_termination(self) -> None:
        """Until the server stops."""
        await self._server.wait_for_termination()
