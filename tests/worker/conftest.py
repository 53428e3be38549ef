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

from worker_testkit import start_worker  # noqa: E402  (needs worker-py on sys.path)

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

@pytest.fixture(scope="session")
def silero():
    """The shared silero-vad weights (loaded once per test run)."""
    import torch

    torch.set_num_threads(1)
    from asr_worker.vad import SileroVad

    return SileroVad()


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
