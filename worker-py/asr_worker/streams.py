"""One stream's life on a front, the same for both recognition RPCs.

A stream is a StreamingRecognize call, or one session of a StreamingRecognizeMux
call. Either way it is admitted worker-wide (`EngineLink.admit`), registered
among the front's open streams (`OpenStreams`: what LoadReport counts, what a
drain waits for and ends), opened from its first request (the config rule, the
validated config, the Session), logged ("stream opened", "stream finished",
"stream ended with error", "stream cancelled") and finally closed and released.
`StreamLease` is that life; the RPCs only differ in how requests reach the
Session and how its responses and its end leave.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from asr.v1 import asr_pb2

from .engine_link import EngineLink
from .errors import AsrError, InvalidConfig
from .log import SessionLogger
from .session import Session, SessionOptions, validate_config
from .vad import VadBatcher, VadModel


class OpenStreams:
    """The open streams of this front: ids, kill switches, and "none open" for drain."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._kills: dict[int, Callable[[AsrError], None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._kills)

    def open(self, kill: Callable[[AsrError], None]) -> int:
        """Register a stream ended by `kill(err)`; returns its id (unique on this front)."""
        call_id = next(self._ids)
        self._kills[call_id] = kill
        self._idle.clear()
        return call_id

    def close(self, call_id: int) -> None:
        """The stream `call_id` has ended."""
        del self._kills[call_id]
        if not self._kills:
            self._idle.set()

    def kill_all(self, err: AsrError) -> int:
        """End every open stream with `err`; returns how many."""
        kills = list(self._kills.values())
        for kill in kills:
            kill(err)
        return len(kills)

    async def wait_idle(self, within_s: float) -> bool:
        """Wait until no stream is open; False if some remain after `within_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
            return True
        except TimeoutError:
            return not self._kills


class StreamLease:
    """One admitted stream, from admission to release.

    Created only after `EngineLink.admit` succeeded (`AsrService.admit_stream`); `close()`
    (idempotent) gives the admission back.

    Args:
        streams: the front's open streams (this one registers there at once).
        link: the engine side (decode port, release).
        vad: the front's VAD weights.
        options: worker-wide session settings.
        logger: the worker's logger.
        vad_batcher: the front's VadBatcher.
    """

    def __init__(
        self,
        *,
        streams: OpenStreams,
        link: EngineLink,
        vad: VadModel,
        options: SessionOptions,
        logger: logging.Logger,
        vad_batcher: VadBatcher,
    ) -> None:
        self._streams = streams
        self._link = link
        self._vad = vad
        self._options = options
        self._logger = logger
        self._batcher = vad_batcher
        #: Set (to the error) when the front ends this stream before it has a Session.
        self.killed: asyncio.Future = asyncio.get_running_loop().create_future()
        #: The stream's Session, once `open` succeeded.
        self.session: Session | None = None
        self._closed = False
        self.call_id = streams.open(self.kill)
        #: This stream's logger (call_id, and session_id once opened).
        self.log: logging.Logger | logging.LoggerAdapter = SessionLogger(
            logger, {"call_id": self.call_id}
        )

    def kill(self, err: AsrError) -> None:
        """End this stream with `err` (drain, worker stop)."""
        if not self.killed.done():
            self.killed.set_result(err)
        if self.session is not None:
            self.session.fail(err)

    def open(self, first: asr_pb2.StreamingRecognizeRequest) -> Session:
        """Open the Session from the stream's first request; raises InvalidConfig by the rules."""
        kind = first.WhichOneof("streaming_request")
        if kind != "config":
            raise InvalidConfig(
                f"the first request must carry config, got {kind or 'an empty request'}"
            )
        settings = validate_config(first.config, self._options)
        self.log = SessionLogger(
            self._logger, {"call_id": self.call_id, "session_id": settings.session_id}
        )
        self.session = Session(
            key=self.call_id,
            settings=settings,
            port=self._link.open_stream(self.call_id),
            vad=self._vad,
            options=self._options,
            logger=self.log,
            vad_batcher=self._batcher,
        )
        self.log.info(
            "stream opened",
            extra={
                "mode": asr_pb2.RecognitionMode.Name(settings.mode),
                "sample_rate_hz": settings.sample_rate_hz,
                "resume_segments": settings.resume_segments,
            },
        )
        return self.session

    def finished(self) -> None:
        """Log the normal end (after the last response)."""
        if self.session is not None:
            self.log.info("stream finished", extra=self.session.summary())

    def ended_with(self, err: AsrError) -> None:
        """Log an end by `err` (the caller reports it to the client)."""
        self.log.info(
            "stream ended with error",
            extra={"code": asr_pb2.ErrorCode.Name(err.code), "error": err.message},
        )

    def cancelled(self) -> None:
        """Log that the client cancelled the stream."""
        self.log.info("stream cancelled")

    def close(self) -> None:
        """Free the session's work, unregister, and release the admission (once)."""
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            self.session.close()
        self._streams.close(self.call_id)
        self._link.release()
