"""Wire format between front processes and the engine process (ZeroMQ, ipc:// sockets).

Each front has one DEALER socket connected to the engine's ROUTER socket. A ZeroMQ message is
one frame holding a pickled list of records (tuples whose first item names the kind): every
record produced during one event-loop turn goes out as one message (`Outbox`), so a front
with hundreds of streams sends one message per turn, not one per audio chunk. Audio travels as
float32 numpy arrays inside the pickle (protocol 5: one copy).

Front -> engine:  ("hello", front_index) ("admit", rid) ("release",) ("drain",)
                  ("audio", stream, segment, start, samples)
                  ("decode", rid, stream, segment, start, end, fields, last)
                  ("close", stream)
Engine -> front:  ("admitted", rid, error) ("result", rid, DecodeResult | None, error)
                  ("load", load_dict, ready)

`fields` is the DecodeRequest's non-audio fields as a dict (engine_core.request_fields), so a
field added to DecodeRequest crosses without a change here. Errors travel as (code, message)
and are rebuilt as the AsrError class of that code. Both sides are the same program version
(one worker), which is what makes pickle acceptable here; nothing outside the worker speaks it.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

from . import errors
from .errors import AsrError, InternalError

#: Pickle protocol of every message (5: out-of-band-capable, compact numpy).
PROTOCOL = 5


def pack(records: list[tuple]) -> bytes:
    """One message from a list of records."""
    return pickle.dumps(records, protocol=PROTOCOL)


def unpack(frame: bytes) -> list[tuple]:
    """The records of one message."""
    return pickle.loads(frame)


def error_to_wire(err: BaseException) -> tuple[int, str]:
    """(code, message) of an exception; non-AsrErrors become INTERNAL."""
    if isinstance(err, AsrError):
        return err.code, err.message
    return InternalError.code, f"{type(err).__name__}: {err}"


def _classes() -> dict[int, type[AsrError]]:
    out: dict[int, type[AsrError]] = {}
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, AsrError) and cls is not AsrError:
            out.setdefault(cls.code, cls)
    return out


_BY_CODE = _classes()


def error_from_wire(wire: tuple[int, str]) -> AsrError:
    """The AsrError for a (code, message) pair."""
    code, message = wire
    return _BY_CODE.get(code, InternalError)(message)


class Outbox:
    """Records queued during one event-loop turn, sent as one message per destination.

    Args:
        send: sends one packed message to a destination (None for a DEALER's only peer).
    """

    def __init__(self, send: Callable[[Any, bytes], None]) -> None:
        self._send = send
        self._queued: dict[Any, list[tuple]] = {}
        self._scheduled = False

    def put(self, dest: Any, record: tuple) -> None:
        """Queue a record for `dest`; the flush runs once at the end of this loop turn."""
        queue = self._queued.get(dest)
        if queue is None:
            queue = self._queued[dest] = []
        queue.append(record)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send everything queued now."""
        self._scheduled = False
        queued, self._queued = self._queued, {}
        for dest, records in queued.items():
            self._send(dest, pack(records))
