"""The engine process's side of the IPC: serves one EngineCore to every front over ZeroMQ.

A ROUTER socket receives the fronts' records (see asr_worker.ipc) and applies them to the
EngineCore in arrival order, so a stream's audio always precedes the decodes that reference it.
Results go back to the front that asked as soon as their ticket resolves; load figures go to
every front on each admission change and every `load_interval_s`, which is what lets any front
answer WatchLoad and health for the whole worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import zmq
import zmq.asyncio

from .engine_core import EngineCore
from .errors import AsrError
from .ipc import Outbox, error_to_wire, unpack
from .scheduler import Ticket


class EngineService:
    """Applies front records to `core` and answers them.

    Args:
        core: the worker's EngineCore.
        address: ROUTER endpoint to bind (ipc://...).
        logger: the engine process's logger.
        load_interval_s: how often load figures are pushed without a change.
    """

    def __init__(
        self,
        core: EngineCore,
        address: str,
        logger: logging.Logger,
        *,
        load_interval_s: float = 0.25,
    ) -> None:
        self.core = core
        self._address = address
        self._log = logger
        self._interval = load_interval_s
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._outbox = Outbox(lambda ident, frame: self._sock.send_multipart([ident, frame]))
        self._fronts: list[bytes] = []
        # Per front (by its index): open streams, for LoadReport.front_streams.
        self._front_index: dict[bytes, int] = {}
        self._front_streams: list[int] = []
        self._tasks: list[asyncio.Task] = []
        self._push_scheduled = False
        core.admission.on_change(self._schedule_push)

    async def start(self) -> None:
        """Bind and start serving."""
        self._sock.bind(self._address)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(), name="engine-ipc-reader"),
            loop.create_task(self._tick(), name="engine-load-push"),
        ]

    async def stop(self) -> None:
        """Stop serving and close the socket."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sock.close(linger=0)
        self._ctx.term()

    def _schedule_push(self) -> None:
        if not self._push_scheduled:
            self._push_scheduled = True
            asyncio.get_running_loop().call_soon(self._push_load)

    def _push_load(self) -> None:
        self._push_scheduled = False
        record = ("load", self._load(), self.core.admission.ready)
        for ident in self._fronts:
            self._outbox.put(ident, record)

    def _load(self) -> dict[str, Any]:
        load = self.core.load()
        load["front_streams"] = list(self._front_streams)
        return load

    def _count(self, ident: bytes, delta: int) -> None:
        index = self._front_index.get(ident)
        if index is not None:
            self._front_streams[index] = max(0, self._front_streams[index] + delta)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._push_load()

    async def _read(self) -> None:
        while True:
            ident, frame = await self._sock.recv_multipart(copy=False)
            ident_b = ident.bytes
            for record in unpack(frame.buffer):
                try:
                    self._apply(ident_b, record)
                except Exception:  # a bug in one record must not stop the engine
                    self._log.exception("bad record from a front", extra={"kind": record[0]})

    def _apply(self, ident: bytes, record: tuple[Any, ...]) -> None:
        kind = record[0]
        core = self.core
        if kind == "audio":
            _, key, segment, start, samples = record
            core.append((ident, key), segment, start, samples)
        elif kind == "decode":
            _, rid, key, segment, start, end, fields, last = record
            try:
                ticket = core.submit((ident, key), segment, start, end, fields, last=last)
            except AsrError as err:
                self._outbox.put(ident, ("result", rid, None, error_to_wire(err)))
                return
            ticket.future.add_done_callback(lambda _f: self._answer(ident, rid, ticket))
        elif kind == "close":
            core.close_stream((ident, record[1]))
        elif kind == "admit":
            err = core.admission.refusal()
            if err is None:
                core.admission.admit()
                self._count(ident, 1)
            self._outbox.put(ident, ("admitted", record[1], None if err is None else error_to_wire(err)))
        elif kind == "release":
            core.admission.release()
            self._count(ident, -1)
        elif kind == "drain":
            core.admission.start_draining()
        elif kind == "hello":
            index = record[1]
            if ident not in self._fronts:
                self._fronts.append(ident)
            self._front_index[ident] = index
            if len(self._front_streams) <= index:
                self._front_streams.extend([0] * (index + 1 - len(self._front_streams)))
            self._outbox.put(ident, ("load", self._load(), core.admission.ready))

    def _answer(self, ident: bytes, rid: int, ticket: Ticket) -> None:
        fut = ticket.future
        if fut.cancelled():
            return  # its stream closed; the front dropped the request already
        exc = fut.exception()
        if exc is not None:
            self._outbox.put(ident, ("result", rid, None, error_to_wire(exc)))
        else:
            self._outbox.put(ident, ("result", rid, fut.result(), None))

