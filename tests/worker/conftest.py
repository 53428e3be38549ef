"""Shared pytest setup for worker tests: import path, shared audio, torch threads."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "worker-py"))

#: Real speech shipped beside the repository (see shared/audio/MANIFEST.json).
SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO_ROOT.parent / "shared" / "audio"))


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """Directory of the shared test audio; skips when it is not beside the checkout."""
    if not (SHARED_AUDIO / "MANIFEST.json").exists():
        pytest.skip(f"shared audio not found at {SHARED_AUDIO}")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def audio_manifest(shared_audio: Path) -> dict:
    """The parsed MANIFEST.json of the shared audio."""
    return json.loads((shared_audio / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Fun-ASR-Nano model directory (tiny dims), built once per session."""
    from asr_worker.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "fun-asr-nano-tiny", seed=0)


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model whose decoder output depends on its whole context.

    The tiny model's decoder is re-drawn "sharp" (RMSNorm gains near 1 as in a trained model,
    larger projections): with the builder's near-zero norm gains the decoder only repeats its
    last token, and a broken position, mask or cache would go unnoticed.
    """
    import shutil

    import torch

    out = tmp_path_factory.mktemp("sharp") / "fun-asr-nano-sharp"
    shutil.copytree(tiny_model_dir, out)
    saved = torch.load(out / "model.pt", map_location="cpu")
    state = saved.get("state_dict", saved)
    gen = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if key.startswith("llm.") and key.endswith("norm.weight"):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        elif key.startswith("llm.model.layers.") and key.endswith("proj.weight"):
            state[key] = value * 4.0
    torch.save(saved, out / "model.pt")
    return out


# --------------------------------------------------------------------------- worker fixtures

import contextlib  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402


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


@pytest.fixture(scope="session")
def silero():
    """The shared silero-vad weights (loaded once per test run)."""
    import torch

    torch.set_num_threads(1)
    from asr_worker.vad import SileroVad

    return SileroVad()


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


@pytest.fixture
async def worker(silero):
    """A ready in-process worker with the fake engine."""
    async with start_worker(silero) as w:
        yield w


@pytest.fixture
async def stub(worker):
    """An asr.v1.Asr stub connected to `worker`."""
    import grpc

    from asr.v1 import asr_pb2_grpc

    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield asr_pb2_grpc.AsrStub(channel)


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



class NetworkBlockedError(RuntimeError):
    """Raised by a connect attempt while `no_network` is active."""


def _refuse_connect(*args, **kwargs):
    raise NetworkBlockedError(f"network access attempted during a model test: {args!r}")


@pytest.fixture(scope="module")
def no_network():
    """Block outgoing connections (TCP and UDP connect, create_connection) for the module.

    Model loading must never reach a hub; a hidden download attempt fails the test.
    Yields the exception class that a blocked connect raises.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_connect)
        mp.setattr(socket.socket, "connect_ex", _refuse_connect)
        mp.setattr(socket, "create_connection", _refuse_connect)
        yield NetworkBlockedError
