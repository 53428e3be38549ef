"""A front process's EngineLink onto the engine process, over one ZeroMQ DEALER socket.

Admission is a round trip to the engine (the one owner of the worker-wide count); audio and
decode requests are fire-and-forget records (ipc.Outbox coalesces one loop turn's records into
one message); results resolve futures by request id. The engine pushes load figures and
readiness on every admission change and a few times a second; `load()` returns the newest.

Those pushes double as the engine's heartbeat. A hung engine (SIGSTOPped, deadlocked, its loop
wedged) ends no call by itself: this front would keep accepting streams and reporting load
while nothing is ever decoded, and gateways would wait forever. A watchdog reacts in two steps:

- after `suspect_s` of silence the engine is *stalled*: `ready` turns false, `load()` says not
  accepting and `engine_stalled`, new admissions are refused, and listeners are told, so the
  front goes NOT_SERVING and gateways fail its streams over by replay. This is cheap and
  reversible — the engine may only be starved of CPU on an overloaded machine — so the first
  message heard from the engine undoes it (listeners are told again);
- after `stall_s` of silence `on_stall` is called (the front ends the worker, so that the
  orchestrator restarts it: a wedged engine becomes a crash).

Measured in docs/reliability.md ("engine hang").
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
from .errors import Overloaded
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
        suspect_s: engine silence (no message at all; it pushes load every 0.25 s) after
            which the engine counts as stalled until it is heard again; None = never.
        stall_s: engine silence after which `on_stall(silent_s)` is called once (the last
            resort); None = never.
        on_stall: what a wedged engine means to this process (see module docstring).
    """

    def __init__(
        self,
        address: str,
        logger: logging.Logger,
        *,
        front_index: int = 0,
        suspect_s: float | None = None,
        stall_s: float | None = None,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        self._address = address
        self._suspect_s = suspect_s
        self._stall_s = stall_s if on_stall is not None else None
        self._on_stall = on_stall
        self._heard_at = time.monotonic()
        self._stalled = False
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
        limits = [x for x in (self._suspect_s, self._stall_s) if x is not None]
        if limits:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(min(limits)), name="engine-watchdog"
            )

    async def _watch(self, first_limit: float) -> None:
        period = min(0.25, first_limit / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - last > 4 * period:
                # This process was starved (its own loop woke late): the engine's messages
                # may be waiting unread. Count silence only from here on.
                self._heard_at = max(self._heard_at, now - period)
            last = now
            if not self._ready or now - self._heard_at < first_limit:
                continue
            # Let the reader drain anything already received before concluding.
            await asyncio.sleep(0)
            silent = time.monotonic() - self._heard_at
            if self._suspect_s is not None and silent >= self._suspect_s and not self._stalled:
                self._set_stalled(True, silent)
            if self._stall_s is not None and self._on_stall is not None and silent >= self._stall_s:
                self._on_stall(silent)
                return

    def _set_stalled(self, stalled: bool, silent_s: float) -> None:
        self._stalled = stalled
        if stalled:
            self._log.warning(
                "engine silent; not serving until it is heard again",
                extra={"silent_s": round(silent_s, 2)},
            )
        else:
            self._log.info(
                "engine heard again; serving", extra={"silent_s": round(silent_s, 2)}
            )
        for listener in self._listeners:
            listener()

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
        """Whether the engine reported that it is warm and is not stalled (see module docstring)."""
        return self._ready and not self._stalled

    @property
    def stalled(self) -> bool:
        """Whether the engine has been silent for `suspect_s` (until it is heard again)."""
        return self._stalled

    async def admit(self) -> None:
        """Ask the engine to admit one stream; raises its refusal, or Overloaded while stalled."""
        if self._stalled:
            # The round trip would wait on a silent engine; a retryable refusal lets the
            # caller go to another worker at once.
            raise Overloaded("the worker's engine is not answering; try another worker")
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
        """The newest worker-wide load figures; not accepting and `engine_stalled` while stalled."""
        if self._stalled:
            return {**self._load, "accepting": False, "engine_stalled": True}
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
            now = time.monotonic()
            if self._stalled:
                self._set_stalled(False, now - self._heard_at)
            self._heard_at = now
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
