"""A front process's EngineLink onto the engine process, over one ZeroMQ DEALER socket.

Admission is a round trip to the engine (the one owner of the worker-wide count); audio and
decode requests are fire-and-forget records (ipc.Outbox coalesces one loop turn's records into
one message); results resolve futures by request id. The engine pushes load figures and
readiness on every admission change and a few times a second; `load()` returns the newest.

Those pushes double as the engine's heartbeat. A hung engine (SIGSTOPped, deadlocked, its loop
wedged) ends no call by itself: this front would keep accepting streams and reporting load
while nothing is ever decoded, and gateways would wait forever. With `stall_s`, a watchdog
calls `on_stall` once the engine has been silent that long (the front ends the worker, so
gateways fail its sessions over at once and the orchestrator restarts it — a hang becomes a
crash). Measured in docs/reliability.md ("engine hang").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from .engine_link import StreamPort
from .ipc import Outbox, error_from_wire, unpack

#: Load figures before the engine's first report.
_NO_LOAD: dict[str, Any] = {
    "active_streams": 0,
    "max_streams": 0,
    "queued_audio_seconds": 0.0,
    "accepting": False,
    "engine": "",
    "recent_rtf": 0.0,
}


def _retrieve(fut: asyncio.Future) -> None:
    # A decode nobody waits for any more (its stream ended) must not log as unhandled.
    if not fut.cancelled():
        fut.exception()


class RemoteStreamPort:
    """StreamPort whose segment audio and decodes go to the engine process."""

    def __init__(self, client: EngineClient, key: Hashable) -> None:
        self._client = client
        self._key = key
        self._pending: dict[int, asyncio.Future] = {}
        self._closed = False

    def append(self, segment: int, start: int, samples: np.ndarray) -> None:
        """See StreamPort."""
        if len(samples):
            self._client.put(("audio", self._key, segment, start, samples))

    def submit(
        self, segment: int, start: int, end: int, fields: dict[str, Any], *, last: bool
    ) -> asyncio.Future:
        """See StreamPort."""
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        rid = self._client.register(self)
        self._pending[rid] = fut
        self._client.put(("decode", rid, self._key, segment, start, end, fields, last))
        return fut

    def resolve(self, rid: int, result: Any, error: tuple[int, str] | None) -> None:
        """Settle request `rid` (called by the client's reader)."""
        fut = self._pending.pop(rid, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error_from_wire(error))
        else:
            fut.set_result(result)

    def close(self) -> None:
        """See StreamPort."""
        if self._closed:
            return
        self._closed = True
        self._client.put(("close", self._key))
        for rid, fut in self._pending.items():
            self._client.unregister(rid)
            fut.cancel()
        self._pending.clear()


class EngineClient:
    """EngineLink over ZeroMQ to the engine process.

    Args:
        address: the engine's ROUTER endpoint (ipc://...).
        logger: this front's logger.
        front_index: this front's number (LoadReport.front_id).
        stall_s: engine silence (no message at all; it pushes load every 0.25 s) after
            which `on_stall(silent_s)` is called once; None = no watchdog.
        on_stall: what a stalled engine means to this process (see module docstring).
    """

    def __init__(
        self,
        address: str,
        logger: logging.Logger,
        *,
        front_index: int = 0,
        stall_s: float | None = None,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        self._address = address
        self._stall_s = stall_s
        self._on_stall = on_stall
        self._heard_at = time.monotonic()
        self._watchdog: asyncio.Task | None = None
        self._front_index = front_index
        self._log = logger
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._outbox = Outbox(lambda _dest, frame: self._sock.send(frame))
        self._ids = itertools.count(1)
        self._ports: dict[int, RemoteStreamPort] = {}
        self._admits: dict[int, asyncio.Future] = {}
        self._load: dict[str, Any] = dict(_NO_LOAD)
        self._ready = False
        self._listeners: list[Callable[[], None]] = []
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect and start reading the engine's messages."""
        self._sock.connect(self._address)
        self.put(("hello", self._front_index))
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="engine-reader")
        if self._stall_s is not None and self._on_stall is not None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(self._stall_s, self._on_stall), name="engine-watchdog"
            )

    async def _watch(self, stall_s: float, on_stall: Callable[[float], None]) -> None:
        period = min(0.25, stall_s / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - last > 4 * period:
                # This process was starved (its own loop woke late): the engine's messages
                # may be waiting unread. Count silence only from here on.
                self._heard_at = max(self._heard_at, now - period)
            last = now
            if not self._ready or now - self._heard_at < stall_s:
                continue
            # Let the reader drain anything already received before concluding.
            await asyncio.sleep(0)
            silent = time.monotonic() - self._heard_at
            if silent >= stall_s:
                on_stall(silent)
                return

    async def stop(self) -> None:
        """Stop reading and close the socket."""
        self._outbox.flush()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._sock.close(linger=0)
        self._ctx.term()

    def put(self, record: tuple) -> None:
        """Queue a record for the engine (sent at the end of this loop turn)."""
        self._outbox.put(None, record)

    def register(self, port: RemoteStreamPort) -> int:
        """A new request id whose result goes to `port`."""
        rid = next(self._ids)
        self._ports[rid] = port
        return rid

    def unregister(self, rid: int) -> None:
        """Forget a request id (its stream closed)."""
        self._ports.pop(rid, None)

    # -- EngineLink ------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the engine reported that it is warm."""
        return self._ready

    async def admit(self) -> None:
        """Ask the engine to admit one stream; raises its refusal."""
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._admits[rid] = fut
        self.put(("admit", rid))
        try:
            error = await fut
        finally:
            self._admits.pop(rid, None)
        if error is not None:
            raise error_from_wire(error)

    def release(self) -> None:
        """An admitted stream ended."""
        self.put(("release",))

    def start_draining(self) -> None:
        """The worker drains: the engine stops admitting everywhere."""
        self.put(("drain",))
        self._outbox.flush()

    def load(self) -> dict[str, Any]:
        """The newest worker-wide load figures."""
        return self._load

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when readiness or admission changes."""
        self._listeners.append(listener)

    def open_stream(self, key: Hashable) -> StreamPort:
        """A decode port for a new stream of this front."""
        return RemoteStreamPort(self, key)

    # -- reading -----------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            frame = await self._sock.recv(copy=False)
            self._heard_at = time.monotonic()
            for record in unpack(frame.buffer):
                kind = record[0]
                if kind == "result":
                    _, rid, result, error = record
                    port = self._ports.pop(rid, None)
                    if port is not None:
                        port.resolve(rid, result, error)
                elif kind == "admitted":
                    _, rid, error = record
                    fut = self._admits.get(rid)
                    if fut is not None and not fut.done():
                        fut.set_result(error)
                elif kind == "load":
                    self._on_load(record[1], record[2])

    def _on_load(self, load: dict[str, Any], ready: bool) -> None:
        old, old_ready = self._load, self._ready
        self._load, self._ready = load, ready
        if ready != old_ready or load["accepting"] != old["accepting"]:
            for listener in self._listeners:
                listener()
