"""EngineClient's engine watchdog over a real ZeroMQ socket pair (ipc://, as in a worker).

The test holds the engine's ROUTER end and speaks the wire format of asr_worker.ipc: it
pushes load records like the engine does every 0.25 s, then goes silent, as a SIGSTOPped
engine would. Short thresholds keep it fast; the process-tree test with a real engine and
SIGSTOP is tests/worker/test_server_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from asr_worker.engine_client import EngineClient
from asr_worker.errors import Overloaded
from asr_worker.ipc import pack

pytestmark = pytest.mark.timeout(30)

LOAD = {
    "active_streams": 1,
    "max_streams": 8,
    "queued_audio_seconds": 0.0,
    "accepting": True,
    "engine": "fake",
    "recent_rtf": 0.0,
}


class EngineEnd:
    """The engine's ROUTER socket; `beating` controls its 50 ms load pushes."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.front: bytes | None = None
        self.beating = True
        self.admits = 0
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._beat())]

    async def _read(self) -> None:
        from asr_worker.ipc import unpack

        while True:
            ident, frame = await self.sock.recv_multipart()
            self.front = ident
            for record in unpack(frame):
                if record[0] == "admit" and self.beating:
                    self.admits += 1
                    await self.sock.send_multipart([ident, pack([("admitted", record[1], None)])])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self.beating and self.front is not None:
                await self.sock.send_multipart([self.front, pack([("load", LOAD, True)])])

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.sock.close(linger=0)
        self.ctx.term()


async def _until(pred, within_s: float) -> float:
    """Seconds until `pred()` holds; AssertionError after `within_s`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"not within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def address(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/engine.sock"


async def test_a_silent_engine_is_stalled_after_suspect_s_and_serving_again_when_heard(address):
    engine = EngineEnd(address)
    engine.start()
    changes: list[tuple[bool, bool]] = []
    client = EngineClient(address, logging.getLogger("test"), suspect_s=0.4)
    client.on_change(lambda: changes.append((client.ready, client.stalled)))
    await client.start()
    try:
        await _until(lambda: client.ready, 5)
        await client.admit()
        assert client.load()["accepting"] and "engine_stalled" not in client.load()

        engine.beating = False
        silent_for = await _until(lambda: client.stalled, 5)
        # Detected after suspect_s, within one watchdog period (0.1 s) and some scheduling slack.
        assert 0.3 <= silent_for <= 1.0, silent_for
        assert not client.ready
        assert client.load()["accepting"] is False and client.load()["engine_stalled"] is True
        assert changes[-1] == (False, True), "listeners were not told of the stall"
        # New streams are refused at once (retryable), not left waiting on a silent engine.
        t0 = time.monotonic()
        with pytest.raises(Overloaded):
            await client.admit()
        assert time.monotonic() - t0 < 0.1

        engine.beating = True
        await _until(lambda: not client.stalled, 5)
        assert client.ready and client.load()["accepting"] is True
        assert changes[-1] == (True, False), "listeners were not told of the recovery"
        await client.admit()
    finally:
        await client.stop()
        await engine.close()


async def test_an_engine_silent_for_stall_s_calls_on_stall_once_after_being_stalled(address):
    engine = EngineEnd(address)
    engine.start()
    calls: list[float] = []
    client = EngineClient(
        address, logging.getLogger("test"), suspect_s=0.3, stall_s=0.9, on_stall=calls.append
    )
    await client.start()
    try:
        await _until(lambda: client.ready, 5)
        engine.beating = False
        stalled_after = await _until(lambda: client.stalled, 5)
        assert not calls, "the last resort ran with the cheap reaction"
        await _until(lambda: bool(calls), 5)
        assert stalled_after < 0.9 <= calls[0], (stalled_after, calls)
        await asyncio.sleep(0.5)
        assert len(calls) == 1
    finally:
        await client.stop()
        await engine.close()


async def test_a_starved_front_resets_its_silence_baseline_instead_of_declaring_a_stall(address):
    engine = EngineEnd(address)
    engine.start()
    client = EngineClient(address, logging.getLogger("test"), suspect_s=0.4)
    stalls: list[bool] = []
    client.on_change(lambda: stalls.append(client.stalled))
    await client.start()
    try:
        await _until(lambda: client.ready, 5)
        # This process's loop is blocked for twice suspect_s (the engine's end shares it, so
        # nothing is pushed meanwhile either): the silence says nothing about the engine.
        time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is the fault under test
        await asyncio.sleep(0.3)
        assert True not in stalls, "a stall was declared for the front's own starvation"
    finally:
        await client.stop()
        await engine.close()
