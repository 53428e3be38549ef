"""One StreamingRecognizeMux call: many sessions, each a stream like a StreamingRecognize call.

Every session is opened, run and closed through a `StreamLease` (streams.py), as a
StreamingRecognize call is, so its rules, results, error statuses and log lines are
the same; only the transport differs:

- Input. One `async for` over the call's requests; each MuxFrame goes straight to
  its session's `Session.handle` (the front's hot loop: a dict lookup and a oneof
  test per frame). A session whose input is paused after a frame (finals waiting
  for inference, audio waiting for the VAD) gets `flow {paused: true}` once, and its
  later frames are held in order (not the reader: the other sessions go on) until
  a task of its own sees `Session.input_resumed()`, says `flow {paused: false}`
  and feeds them. More than `MAX_HELD_BYTES` held ends the session
  RESOURCE_EXHAUSTED. Frames that arrive while the session is still being admitted
  are held the same way.
- Output. Every session's responses, flow changes and its end go into ONE queue
  in order; the call's response stream sends everything queued when it runs as
  one StreamingRecognizeMuxResponse (split only past `MAX_RESPONSE_BYTES`): one
  message per wake-up, not per event.
- Ends. A session ends with exactly one `SessionEnd` carrying the gRPC status its
  own call would have ended with, except when the client cancels it (nothing more
  is sent). The call ends OK after the client half-closed it and every session has
  ended; INVALID_ARGUMENT on a request that does not decode; with the error given
  to `stop()` (the worker stops) after every session has ended.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from asr.v1 import asr_pb2

from .errors import AsrError, InternalError, InvalidConfig, Overloaded
from .session import Session
from .streams import StreamLease

#: Bytes of frames a paused session may have held before it ends RESOURCE_EXHAUSTED.
MAX_HELD_BYTES = 16 * 1024 * 1024
#: A response message is split before it grows past this (the gateway's receive limit is
#: 4 MiB; smaller messages keep one huge batch from delaying the next).
MAX_RESPONSE_BYTES = 1024 * 1024

_OK = grpc.StatusCode.OK.value[0]


class _MuxSession:
    """One session of a mux call: its lease, Session, held frames and tasks."""

    __slots__ = (
        "failure",
        "feeder",
        "held",
        "held_bytes",
        "lease",
        "number",
        "paused",
        "session",
        "task"
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.lease: StreamLease | None = None
        self.session: Session | None = None
        #: Frames waiting in order (while admitted, or while paused); None: handled directly.
        self.held: collections.deque[asr_pb2.MuxFrame] | None = collections.deque()
        self.held_bytes = 0
        #: Whether the client was last told `paused: true`.
        self.paused = False
        self.task: asyncio.Task | None = None
        self.feeder: asyncio.Task | None = None
        #: An error that ended the session before it had a Session (while it was admitted).
        self.failure: AsrError | None = None


class MuxCall:
    """The sessions and the output queue of one StreamingRecognizeMux call.

    Args:
        admit: admits and registers one stream (AsrService.admit_stream); raises the
            refusal's AsrError.
        logger: the worker's logger (for failures of the call itself; sessions log
            through their leases).
    """

    def __init__(
        self, *, admit: Callable[[], Awaitable[StreamLease]], logger: logging.Logger
    ) -> None:
        self._admit = admit
        self._log = logger
        #: Sessions that take frames, by number (admitting, open, paused).
        self._sessions: dict[int, _MuxSession] = {}
        #: Every session not yet ended (a half-closed one still sends its last events).
        self._live: set[_MuxSession] = set()
        self._highest = -1
        #: Events waiting to be sent: (number, response) pairs and ready MuxEvents.
        self._out: list = []
        self._wake = asyncio.Event()
        self._input_done = False
        self._error: AsrError | None = None
        self._stopping: AsrError | None = None

    # -- the call ----------------------------------------------------------

    async def run(
        self, requests: AsyncIterator[asr_pb2.StreamingRecognizeMuxRequest]
    ) -> AsyncIterator[asr_pb2.StreamingRecognizeMuxResponse]:
        """The call's responses; raises the AsrError that ends the call, if any."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                if self._out:
                    batch, self._out = self._out, []
                    for message in _messages(batch):
                        yield message
                    continue
                if self._error is not None:
                    raise self._error
                if not self._live and (self._input_done or self._stopping is not None):
                    if self._stopping is not None:
                        raise self._stopping
                    return
                self._wake.clear()
                await self._wake.wait()
                # Everything else that became ready in this loop turn joins the batch.
                await asyncio.sleep(0)
        finally:
            reader.cancel()
            for ms in list(self._live):
                self._drop(ms)

    def stop(self, err: AsrError) -> None:
        """The worker stops: end every open session with `err`, then the call."""
        self._stopping = err
        for ms in list(self._live):
            if ms.lease is not None:
                ms.lease.kill(err)
            elif ms.task is not None:
                ms.task.cancel()
                self._end(ms, err.status.value[0], err.message)
                self._live.discard(ms)
                self._sessions.pop(ms.number, None)
        self._wake.set()

    # -- input -------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[asr_pb2.StreamingRecognizeMuxRequest]) -> None:
        sessions = self._sessions
        try:
            async for req in requests:
                for frame in req.frames:
                    ms = sessions.get(frame.session)
                    if ms is None:
                        if frame.session > self._highest:
                            self._highest = frame.session
                            self._new_session(frame)
                        # else: a lower number not open: the frame crossed its session's end.
                    elif ms.held is not None:
                        self._hold(ms, frame)
                    else:
                        try:
                            if frame.WhichOneof("frame") == "request":
                                session = ms.session
                                session.handle(frame.request)  # type: ignore[union-attr]
                                if session.input_paused:  # type: ignore[union-attr]
                                    self._pause(ms)
                            else:
                                self._control(ms, frame)
                        except Exception as exc:  # the session's end, see _failed
                            self._failed(ms, exc)
        except DecodeError:
            self._error = InvalidConfig(
                "malformed request: not an asr.v1.StreamingRecognizeMuxRequest"
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in the dispatch itself: the whole call
            self._log.exception("mux call failed")
            self._error = InternalError("internal error in the mux call")
        self._input_done = True
        self._wake.set()

    def _new_session(self, frame: asr_pb2.MuxFrame) -> None:
        if frame.WhichOneof("frame") == "cancel" and frame.cancel:
            return  # cancelled before it was opened: nothing to free, nothing to say
        ms = _MuxSession(frame.session)
        if self._stopping is not None:
            self._end(ms, self._stopping.status.value[0], self._stopping.message)
            return
        self._sessions[ms.number] = ms
        self._live.add(ms)
        ms.task = asyncio.create_task(self._run_session(ms, frame))

    def _control(self, ms: _MuxSession, frame: asr_pb2.MuxFrame) -> None:
        """A frame other than a request, for a session that takes frames directly."""
        kind = frame.WhichOneof("frame")
        if kind == "half_close" and frame.half_close:
            del self._sessions[ms.number]  # no more input; its last events still come
            ms.session.finish()  # type: ignore[union-attr]
        elif kind == "cancel" and frame.cancel:
            self._cancel(ms)
        else:
            self._failed(
                ms,
                InvalidConfig(
                    "frame carries none of request, half_close, cancel"
                    if kind is None
                    else f"frame.{kind} must be true when set"
                ),
            )

    def _failed(self, ms: _MuxSession, exc: Exception) -> None:
        """A frame broke the session's rules (AsrError) or hit a bug: end that session only."""
        self._sessions.pop(ms.number, None)
        if not isinstance(exc, AsrError):
            lease = ms.lease
            (lease.log if lease is not None else self._log).error(
                "session failed", exc_info=(type(exc), exc, exc.__traceback__)
            )
            exc = InternalError(f"internal error: {type(exc).__name__}")
        ms.held = None
        ms.held_bytes = 0
        if ms.feeder is not None:
            ms.feeder.cancel()
            ms.feeder = None
        if ms.session is not None:
            ms.session.fail(exc)
        else:
            ms.failure = exc  # still being admitted: it ends as soon as it is

    def _cancel(self, ms: _MuxSession) -> None:
        """The client cancelled the session: free it now and send nothing more for it."""
        self._drop(ms)
        n = ms.number
        if self._out:
            self._out = [
                e for e in self._out if (e[0] if type(e) is tuple else e.session) != n
            ]
        self._wake.set()  # the call may be over now

    def _drop(self, ms: _MuxSession) -> None:
        """Free a session at once (its tasks are cancelled; no end is sent)."""
        self._sessions.pop(ms.number, None)
        self._live.discard(ms)
        if ms.feeder is not None:
            ms.feeder.cancel()
        if ms.task is not None:
            ms.task.cancel()
        if ms.lease is not None:
            ms.lease.close()

    # -- backpressure ------------------------------------------------------

    def _pause(self, ms: _MuxSession) -> None:
        """After a frame the session cannot take more: say so once, hold its frames."""
        ms.held = collections.deque()
        ms.held_bytes = 0
        if not ms.paused:
            ms.paused = True
            self._flow(ms, True)
        ms.feeder = asyncio.create_task(self._feed(ms))

    def _hold(self, ms: _MuxSession, frame: asr_pb2.MuxFrame) -> None:
        if frame.WhichOneof("frame") == "cancel" and frame.cancel:
            self._cancel(ms)  # frees at once, not in turn
            return
        held = ms.held
        assert held is not None
        ms.held_bytes += frame.ByteSize()
        if ms.held_bytes > MAX_HELD_BYTES:
            self._failed(
                ms,
                Overloaded(
                    f"session sent more than {MAX_HELD_BYTES >> 20} MiB past the pause "
                    "of its input (MuxEvent.flow)"
                ),
            )
            return
        held.append(frame)

    async def _feed(self, ms: _MuxSession) -> None:
        """Feed a paused session's held frames in order once it can take them."""
        session = ms.session
        assert session is not None
        while True:
            if session.input_paused:
                await session.input_resumed()
            if ms.paused:
                ms.paused = False
                self._flow(ms, False)
            held = ms.held
            if held is None:
                return  # the session failed meanwhile
            while held and not session.input_paused:
                frame = held.popleft()
                ms.held_bytes -= frame.ByteSize()
                try:
                    if frame.WhichOneof("frame") == "request":
                        session.handle(frame.request)
                    else:
                        self._control(ms, frame)
                except Exception as exc:  # the session's end, see _failed
                    self._failed(ms, exc)
                    return
                if ms.number not in self._sessions:
                    return  # half-closed or failed: the rest is never read
            if not held and not session.input_paused:
                ms.held = None  # read directly again
                ms.feeder = None
                return
            if not ms.paused:
                ms.paused = True
                self._flow(ms, True)

    # -- a session's life --------------------------------------------------

    async def _run_session(self, ms: _MuxSession, first: asr_pb2.MuxFrame) -> None:
        try:
            lease = await self._admit()
        except AsrError as err:
            self._finish(ms, err.status.value[0], err.message)
            return
        except Exception as exc:  # a bug: this session ends INTERNAL
            self._log.error("session admission failed", exc_info=exc)
            self._finish(ms, grpc.StatusCode.INTERNAL.value[0], f"internal error: {type(exc).__name__}")
            return
        ms.lease = lease
        try:
            if ms.failure is not None:
                raise ms.failure
            kind = first.WhichOneof("frame")
            if kind == "half_close" and first.half_close:
                # As a StreamingRecognize call half-closed without sending anything.
                self._finish(ms, _OK, "")
                return
            if kind != "request":
                raise InvalidConfig(
                    f"the first request must carry config, got {kind or 'an empty frame'}"
                )
            session = lease.open(first.request)
            ms.session = session
            if ms.held:
                ms.feeder = asyncio.create_task(self._feed(ms))
            elif ms.held is not None:
                ms.held = None
            number = ms.number
            wake = self._wake
            async for response in session.responses():
                self._out.append((number, response))
                wake.set()
            lease.finished()
            self._finish(ms, _OK, "")
        except AsrError as err:
            lease.ended_with(err)
            self._finish(ms, err.status.value[0], err.message)
        except asyncio.CancelledError:
            lease.cancelled()  # by the client (MuxFrame.cancel, or the whole call)
            raise
        except Exception as exc:  # a bug: this session ends INTERNAL
            lease.log.error("session failed", exc_info=exc)
            self._finish(ms, grpc.StatusCode.INTERNAL.value[0], f"internal error: {type(exc).__name__}")
        finally:
            if ms.feeder is not None:
                ms.feeder.cancel()
            lease.close()

    def _finish(self, ms: _MuxSession, code: int, message: str) -> None:
        """The session ended by itself: unregister it, then its end event."""
        self._sessions.pop(ms.number, None)
        if ms.feeder is not None:
            ms.feeder.cancel()
            ms.feeder = None
        if ms in self._live:
            self._live.discard(ms)
            self._end(ms, code, message)
        self._wake.set()

    # -- output ------------------------------------------------------------

    def _end(self, ms: _MuxSession, code: int, message: str) -> None:
        self._out.append(
            asr_pb2.MuxEvent(session=ms.number, end=asr_pb2.SessionEnd(code=code, message=message))
        )
        self._wake.set()

    def _flow(self, ms: _MuxSession, paused: bool) -> None:
        self._out.append(
            asr_pb2.MuxEvent(session=ms.number, flow=asr_pb2.FlowControl(paused=paused))
        )
        self._wake.set()


def _messages(batch: list) -> list[asr_pb2.StreamingRecognizeMuxResponse]:
    """The batch as one response message, or several when it would pass MAX_RESPONSE_BYTES."""
    msg = asr_pb2.StreamingRecognizeMuxResponse()
    events = msg.events
    for item in batch:
        if type(item) is tuple:
            events.add(session=item[0], response=item[1])
        else:
            events.append(item)
    if msg.ByteSize() <= MAX_RESPONSE_BYTES:
        return [msg]
    out = []
    msg = asr_pb2.StreamingRecognizeMuxResponse()
    size = 0
    for event in events:
        n = event.ByteSize() + 8  # the field's tag and length prefix, at most
        if size and size + n > MAX_RESPONSE_BYTES:
            out.append(msg)
            msg = asr_pb2.StreamingRecognizeMuxResponse()
            size = 0
        msg.events.append(event)
        size += n
    out.append(msg)
    return out
