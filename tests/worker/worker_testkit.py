"""Helpers the worker tests import by name: an in-process worker, request streams, WAV reading.

A module of its own, not conftest.py: tests/deploy has a conftest.py too, and two modules both
imported as `conftest` collide when one pytest run collects both directories.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def wait_serving(channel, timeout_s: float, poll_s: float = 0.1) -> None:
    """Poll grpc.health.v1 Check on `channel` until SERVING; AssertionError after `timeout_s`.

    For workers started as subprocesses: SERVING comes only after the engine has warmed up,
    and a Check may fail outright while the server is still binding.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(poll_s)
    raise AssertionError(f"worker never became SERVING within {timeout_s} s")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(int16 samples, sample rate) of a mono PCM WAV."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="int16")
    return data, rate


@dataclass
class RunningWorker:
    """An in-process worker on 127.0.0.1:<port> with its parts exposed."""

    address: str
    server: object
    service: object
    scheduler: object
    engine: object
    core: object

    async def mark_ready(self) -> None:
        """The engine is warm: admission opens and health turns SERVING."""
        self.core.admission.set_ready()
        await self.server.sync_health()


@contextlib.asynccontextmanager
async def start_worker(silero, *, engine=None, ready: bool = True, max_streams: int = 16,
                       max_batch_size: int = 8, batch_window_ms: float = 5.0, max_queue: int = 64,
                       session=None):
    """Run a real grpc.aio worker (fake engine by default) for the duration of the block."""
    import logging

    from asr_worker.engine.fake import FakeEngine
    from asr_worker.engine_core import Admission, EngineCore
    from asr_worker.engine_link import LocalEngineLink
    from asr_worker.scheduler import Scheduler
    from asr_worker.server import AsrService, ServiceConfig, WorkerServer
    from asr_worker.session import SessionOptions

    engine = engine or FakeEngine(base_ms=2, per_item_ms=1)
    log = logging.getLogger("asr_worker.test")
    scheduler = Scheduler(engine, max_batch_size=max_batch_size, batch_window_ms=batch_window_ms,
                          max_queue=max_queue)
    core = EngineCore(scheduler, Admission(max_streams), engine.name)
    service = AsrService(
        link=LocalEngineLink(core), vad=silero,
        config=ServiceConfig(max_streams=max_streams, worker_id="test-worker",
                             session=session or SessionOptions()),
        logger=log,
    )
    server = WorkerServer(service, log)
    port = await server.start("127.0.0.1:0")
    try:
        await scheduler.start()
        running = RunningWorker(f"127.0.0.1:{port}", server, service, scheduler, engine, core)
        if ready:
            await scheduler.warmup()
            await running.mark_ready()
        yield running
    finally:
        await server.stop(0)
        await scheduler.stop()


def requests_for(pcm: bytes, *, config, chunk_bytes: int = 1920, end_of_input: bool = True):
    """Config, audio chunks of `chunk_bytes`, optionally END_OF_INPUT."""
    from asr.v1 import asr_pb2

    out = [asr_pb2.StreamingRecognizeRequest(config=config)]
    for i in range(0, len(pcm), chunk_bytes):
        out.append(asr_pb2.StreamingRecognizeRequest(
            audio=asr_pb2.AudioChunk(pcm16le=pcm[i:i + chunk_bytes])))
    if end_of_input:
        out.append(asr_pb2.StreamingRecognizeRequest(
            control=asr_pb2.Control(type=asr_pb2.CONTROL_TYPE_END_OF_INPUT)))
    return out


async def collect(call) -> list:
    """All responses of a streaming call."""
    return [r async for r in call]
