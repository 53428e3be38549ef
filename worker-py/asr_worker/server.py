"""The grpc.aio server: asr.v1.Asr, grpc.health.v1, admission and drain.

`AsrService` implements the contract (proto/asr/v1/asr.proto) in one front: one
Session per StreamingRecognize call or per session of a StreamingRecognizeMux call
(mux.py), both opened through `admit_stream` (streams.py), and worker-wide load
reports for WatchLoad.
`WorkerServer` binds the port (shared with the other fronts through
SO_REUSEPORT when the worker runs several), serves health ("" and "asr.v1.Asr":
NOT_SERVING until the engine side reports it is warm, NOT_SERVING again while
draining) and drains:

1. `drain()` sets accepting=false and NOT_SERVING, tells WatchLoad watchers,
   and refuses new streams (calls, mux sessions) with UNAVAILABLE;
2. open streams may finish for up to `drain_grace_s`;
3. the rest end with UNAVAILABLE (retryable: the gateway replays them with
   StreamingConfig.resume elsewhere), then the mux calls end UNAVAILABLE and the
   server stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from asr.v1 import asr_pb2, asr_pb2_grpc

from .engine_link import EngineLink
from .errors import AsrError, Draining, InternalError, InvalidConfig
from .mux import MuxCall
from .session import Session, SessionOptions
from .streams import OpenStreams, StreamLease
from .vad import VadBatcher, VadModel, VadObserver

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
    #: This front's number within its worker (LoadReport.front_id).
    front_id: int = 0
    #: How long a stream's VAD windows may wait for other streams' to be scored in one
    #: call (VadBatcher.tick_s), in ms; 0 scores as soon as the loop is free.
    vad_batch_ms: int = 64


class AsrService(asr_pb2_grpc.AsrServicer):
    """The asr.v1.Asr servicer of one front.

    Admission belongs to the engine side (`EngineLink.admit`: worker-wide, so the limit holds
    across fronts); this class only keeps its own open calls so it can drain and end them.

    Args:
        link: the engine side (worker-wide admission, load, decode ports).
        vad: the VAD weights of this front.
        config: limits and session settings.
        logger: the worker's logger.
        vad_observer: told VAD time and audio in (the process's WorkerMetrics), if any.
    """

    def __init__(
        self,
        *,
        link: EngineLink,
        vad: VadModel,
        config: ServiceConfig,
        logger: logging.Logger,
        vad_observer: VadObserver | None = None,
    ) -> None:
        self.link = link
        self._vad = vad
        self.config = config
        self._log = logger
        self.draining = False
        self._calls = OpenStreams()
        #: Open StreamingRecognizeMux calls (ended explicitly when the worker stops).
        self._mux_calls: set[MuxCall] = set()
        #: Set once the worker stops: mux calls opened from then on end with it at once.
        self._mux_stopped: AsrError | None = None
        self._changed = asyncio.Event()
        link.on_change(self._notify)
        #: Scores all streams' VAD windows together, once per tick.
        self.vad_batcher = VadBatcher(
            vad, tick_s=config.vad_batch_ms / 1000.0, observer=vad_observer
        )

    # -- load --------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        """Calls open on this front."""
        return len(self._calls)

    @property
    def accepting(self) -> bool:
        """Whether a new stream would be admitted (worker-wide)."""
        return not self.draining and bool(self.link.load()["accepting"])

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start_draining(self) -> None:
        """Refuse new streams from now on (the whole worker drains)."""
        self.draining = True
        self.link.start_draining()
        self._notify()

    def load_report(self) -> asr_pb2.LoadReport:
        """A snapshot of the whole worker's load (the engine side aggregates every front)."""
        report = asr_pb2.LoadReport(
            worker_id=self.config.worker_id,
            front_id=self.config.front_id,
            mux=True,  # every front serves StreamingRecognizeMux
            **self.link.load(),
        )
        if self.draining:
            report.accepting = False
        return report

    async def wait_idle(self, within_s: float) -> bool:
        """Wait until no call is open here; False if some remain after `within_s`."""
        return await self._calls.wait_idle(within_s)

    def kill_all(self, err: AsrError) -> int:
        """End every open call with `err`; returns how many."""
        return self._calls.kill_all(err)

    def start(self) -> None:
        """Start background work (the VAD batcher) on the running loop."""
        self.vad_batcher.start()

    async def shutdown(self) -> None:
        """Stop the VAD batcher."""
        await self.vad_batcher.stop()

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

    async def admit_stream(self) -> StreamLease:
        """Admit one stream (worker-wide) and register it here; raises the refusal's AsrError.

        Both RPCs open every stream (a call, or one session of a mux call) through this.
        """
        if self.draining:
            raise Draining()
        # With an engine process the answer takes a round trip; a stream cancelled meanwhile
        # (a mux session's cancel, a call's end) must still give back what the engine admits.
        admission = asyncio.ensure_future(self.link.admit())
        try:
            await asyncio.shield(admission)
        except asyncio.CancelledError:
            admission.add_done_callback(self._release_if_admitted)
            raise
        return StreamLease(
            streams=self._calls,
            link=self.link,
            vad=self._vad,
            options=self.config.session,
            logger=self._log,
            vad_batcher=self.vad_batcher,
        )

    def _release_if_admitted(self, admission: asyncio.Future) -> None:
        if not admission.cancelled() and admission.exception() is None:
            self.link.release()

    async def StreamingRecognize(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeResponse]:
        """One recognition session; see the proto for the rules."""
        try:
            lease = await self.admit_stream()
        except AsrError as err:
            await context.abort(err.status, err.message)
        reader: asyncio.Task | None = None
        try:
            it = _decoded(request_iterator)
            first_task = asyncio.ensure_future(anext(it))
            await asyncio.wait({first_task, lease.killed}, return_when=asyncio.FIRST_COMPLETED)
            if lease.killed.done():
                first_task.cancel()
                raise lease.killed.result()
            try:
                first = first_task.result()
            except StopAsyncIteration:
                return  # the client half-closed without sending anything
            session = lease.open(first)
            reader = asyncio.create_task(self._read(session, it, lease.log))
            async for response in session.responses():
                yield response
            await reader
            lease.finished()
        except AsrError as err:
            lease.ended_with(err)
            await context.abort(err.status, err.message)
        except asyncio.CancelledError:
            lease.cancelled()
            raise
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
            lease.close()

    async def StreamingRecognizeMux(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeMuxRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeMuxResponse]:
        """Many sessions over one call, each opened through `admit_stream`; see the proto."""
        call = MuxCall(admit=self.admit_stream, logger=self._log)
        self._mux_calls.add(call)
        if self._mux_stopped is not None:
            call.stop(self._mux_stopped)  # opened after the worker began to stop
        try:
            async for response in call.run(request_iterator):
                yield response
        except AsrError as err:
            await context.abort(err.status, err.message)
        finally:
            self._mux_calls.discard(call)

    def stop_mux_calls(self, err: AsrError) -> int:
        """The worker stops: end each mux call with `err` once its sessions have ended
        (each still-open session ends with `err` first); returns how many calls."""
        self._mux_stopped = err
        calls = list(self._mux_calls)
        for call in calls:
            call.stop(err)
        return len(calls)

    async def _read(
        self,
        session: Session,
        it: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        try:
            async for req in it:
                if session.input_paused:
                    await session.input_resumed()
                session.handle(req)
            session.finish()
        except AsrError as err:
            session.fail(err)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: end this call only
            log.exception("session failed")
            session.fail(InternalError(f"internal error: {type(exc).__name__}"))


async def _decoded(
    requests: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
) -> AsyncIterator[asr_pb2.StreamingRecognizeRequest]:
    """The call's requests; bytes that are not a StreamingRecognizeRequest are the client's error.

    grpc.aio raises the deserializer's DecodeError from the request iterator; unhandled it
    would end the call as UNKNOWN ("unexpected error") and log a traceback, as for a bug
    (found by tests/worker/test_fuzz_requests.py).
    """
    try:
        async for req in requests:
            yield req
    except DecodeError as exc:
        raise InvalidConfig("malformed request: not an asr.v1.StreamingRecognizeRequest") from exc


class WorkerServer:
    """The grpc.aio server hosting AsrService and health.

    Args:
        service: the AsrService.
        logger: the worker's logger.
    """

    def __init__(
        self, service: AsrService, logger: logging.Logger, *, reuse_port: bool = False
    ) -> None:
        self.service = service
        self._log = logger
        self.health = health.aio.HealthServicer()
        self._serving: bool | None = None
        self._health_task: asyncio.Task | None = None
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # The fronts of one worker share its port; a single-front worker must fail
                # on a taken port instead of silently sharing it (the CLI also checks
                # the port before starting any front).
                ("grpc.so_reuseport", 1 if reuse_port else 0),
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
        await self.sync_health()
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot bind {listen}")
        await self._server.start()
        self.service.start()
        self.service.link.on_change(self._health_changed)
        await self.sync_health()
        return self.port

    def _health_changed(self) -> None:
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self.sync_health())

    async def sync_health(self) -> None:
        """Health follows the engine: SERVING once it is warm, until this worker drains."""
        serving = self.service.link.ready and not self.service.draining
        if serving is self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)

    async def drain(self, grace_s: float) -> None:
        """Stop admitting, let streams finish up to `grace_s`, end the rest, stop."""
        self.service.start_draining()
        await self.sync_health()
        open_streams = self.service.active_streams
        self._log.info("draining", extra={"open_streams": open_streams, "grace_s": grace_s})
        if not await self.service.wait_idle(grace_s):
            n = self.service.kill_all(
                Draining("worker shut down after the drain grace period; resume elsewhere")
            )
            self._log.info("drain grace over; ending streams", extra={"ended": n})
            await self.service.wait_idle(2.0)
        # Mux calls outlive their sessions; they end now, UNAVAILABLE, within stop's grace.
        self.service.stop_mux_calls(Draining("worker shutting down; resume elsewhere"))
        await self.stop(grace_s=1.0)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving at once (or within grace_s)."""
        await self._server.stop(grace_s)
        await self.service.shutdown()

    async def wait_for_termination(self) -> None:
        """Until the server stops."""
        await self._server.wait_for_termination()
