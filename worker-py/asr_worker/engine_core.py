"""The engine side of a worker: admission, the segment audio store and the scheduler.

One `EngineCore` exists per worker. It lives in the engine process (asr_worker.engine_proc
serves it to the front processes over ZeroMQ) or, in tests and in-process benchmarks, next to a
single front (`LocalEngineLink`). Either way it is the only place that

- admits streams (`Admission`: worker-wide, so the limit and the load report cover every front);
- keeps the audio of open segments (`SegmentStore`): fronts append new samples as they arrive, so
  audio crosses the process boundary once, and decode requests name a (stream, segment, range)
  instead of carrying samples;
- rebuilds `DecodeRequest`s from the store and submits them to the one Scheduler. The request's
  non-audio fields travel as a plain dict (`request_fields`), so fields added to DecodeRequest
  later pass through without any change here or in the IPC. Each request also names its segment
  (`SegmentRef`), so an engine may keep per-segment work (Fun-ASR-Nano: fbank frames); an engine
  that does (`SegmentCachingEngine`) is told when a stream closes or a final is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from .engine.base import DecodeRequest, SegmentCachingEngine, SegmentRef
from .errors import AsrError, Draining, Overloaded
from .scheduler import Scheduler, Ticket

#: Why a stream is refused before the engine is warm (UNAVAILABLE: retry elsewhere or later).
NOT_READY_MESSAGE = "worker is loading the model; retry shortly"


def request_fields(request: DecodeRequest) -> dict[str, Any]:
    """Every DecodeRequest field except the audio, by name (what crosses to the engine)."""
    return {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "audio"}


class Admission:
    """The one owner of "may another stream open?" for a whole worker.

    Counts open streams against `max_streams`, and knows whether the engine is warm and whether
    the worker drains. Listeners are told of every change that flips `accepting` (load reports
    are pushed on those changes).

    Args:
        max_streams: streams admitted at once.
    """

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.active = 0
        self.ready = False
        self.draining = False
        self._listeners: list[Callable[[], None]] = []

    @property
    def accepting(self) -> bool:
        """Whether a new stream would be admitted now."""
        return self.ready and not self.draining and self.active < self.max_streams

    def refusal(self) -> AsrError | None:
        """Why a stream opening now would be refused, or None."""
        if self.draining:
            return Draining()
        if not self.ready:
            return Draining(NOT_READY_MESSAGE)
        if self.active >= self.max_streams:
            return Overloaded(
                f"worker at capacity: {self.active} of {self.max_streams} streams open; "
                "retry on another worker"
            )
        return None

    def admit(self) -> None:
        """Count one more stream; raises the refusal when there is one."""
        err = self.refusal()
        if err is not None:
            raise err
        self.active += 1
        if self.active >= self.max_streams:
            self._changed()

    def release(self) -> None:
        """A stream ended."""
        was_full = self.active >= self.max_streams
        self.active = max(0, self.active - 1)
        if was_full or self.active == 0:
            self._changed()

    def set_ready(self) -> None:
        """The engine is warm: admission opens."""
        self.ready = True
        self._changed()

    def start_draining(self) -> None:
        """Refuse new streams from now on."""
        if not self.draining:
            self.draining = True
            self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of admission state."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()


class _SegmentAudio:
    """Samples of one open segment from absolute position `start`, appended in order."""

    __slots__ = ("_data", "_len", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self._data = np.empty(16_000, dtype=np.float32)
        self._len = 0

    @property
    def end(self) -> int:
        return self.start + self._len

    def append(self, start: int, samples: np.ndarray) -> None:
        # Fronts send contiguous audio; an overlap (re-sent samples) is skipped, a gap is a bug.
        skip = self.end - start
        if skip < 0:
            raise ValueError(f"segment audio gap: have up to {self.end}, got {start}")
        samples = samples[skip:]
        need = self._len + len(samples)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len : need] = samples
        self._len = need

    def slice(self, start: int, end: int) -> np.ndarray:
        s = max(start - self.start, 0)
        e = min(end - self.start, self._len)
        return self._data[s:e].copy() if e > s else np.zeros(0, dtype=np.float32)


class SegmentStore:
    """The audio of every open segment of every stream, keyed by (stream, segment id)."""

    def __init__(self) -> None:
        self._segments: dict[tuple[Hashable, int], _SegmentAudio] = {}
        self._by_stream: dict[Hashable, set[int]] = {}

    def append(self, stream: Hashable, segment: int, start: int, samples: np.ndarray) -> None:
        """Add samples of `segment` beginning at absolute position `start`."""
        key = (stream, segment)
        seg = self._segments.get(key)
        if seg is None:
            seg = self._segments[key] = _SegmentAudio(start)
            self._by_stream.setdefault(stream, set()).add(segment)
        seg.append(start, samples)

    def slice(self, stream: Hashable, segment: int, start: int, end: int) -> np.ndarray:
        """A copy of [start, end) of the segment (empty when unknown)."""
        seg = self._segments.get((stream, segment))
        return seg.slice(start, end) if seg is not None else np.zeros(0, dtype=np.float32)

    def start(self, stream: Hashable, segment: int, default: int) -> int:
        """Absolute position of the segment's first stored sample (`default` when unknown)."""
        seg = self._segments.get((stream, segment))
        return seg.start if seg is not None else default

    def drop(self, stream: Hashable, segment: int) -> None:
        """Forget one segment (its final took its audio)."""
        if self._segments.pop((stream, segment), None) is not None:
            ids = self._by_stream.get(stream)
            if ids is not None:
                ids.discard(segment)
                if not ids:
                    del self._by_stream[stream]

    def drop_stream(self, stream: Hashable) -> None:
        """Forget every segment of a stream."""
        for segment in self._by_stream.pop(stream, ()):
            self._segments.pop((stream, segment), None)

    @property
    def samples(self) -> int:
        """Samples held (diagnostics)."""
        return sum(s._len for s in self._segments.values())

    def __len__(self) -> int:
        return len(self._segments)


class EngineCore:
    """Admission + segment store + the Scheduler: everything a worker has exactly once.

    Args:
        scheduler: the one Scheduler (owns the engine); its batch target follows the open
            stream count.
        admission: worker-wide admission.
        engine_name: reported in load reports.
    """

    def __init__(self, scheduler: Scheduler, admission: Admission, engine_name: str) -> None:
        self.scheduler = scheduler
        self.admission = admission
        self.engine_name = engine_name
        self.store = SegmentStore()
        engine = scheduler.engine
        #: The engine, when it keeps per-segment state that must be freed with its segment.
        self._caching: SegmentCachingEngine | None = (
            engine if isinstance(engine, SegmentCachingEngine) else None
        )
        if scheduler.concurrency is None:
            scheduler.concurrency = lambda: admission.active

    def append(self, stream: Hashable, segment: int, start: int, samples: np.ndarray) -> None:
        """New samples of an open segment."""
        self.store.append(stream, segment, start, samples)

    def submit(
        self,
        stream: Hashable,
        segment: int,
        start: int,
        end: int,
        fields: dict[str, Any],
        *,
        last: bool,
    ) -> Ticket:
        """Decode [start, end) of a stored segment; `last` frees the segment's audio.

        Raises Overloaded when the scheduler's queue is full.
        """
        first = self.store.start(stream, segment, start)
        offset = start - first
        if offset > 0 and self._caching is not None:
            # A windowed decode starts up to one hop earlier, on the engine's grid, so it
            # reuses the segment's cached state (a window less than one hop longer than asked).
            offset -= offset % self._caching.segment_align
            start = first + offset
        audio = self.store.slice(stream, segment, start, end)
        if last:
            self.store.drop(stream, segment)
        fields = {**fields, "segment": SegmentRef(stream, segment, offset)}
        try:
            return self.scheduler.submit(DecodeRequest(audio=audio, **fields), stream_key=stream)
        except AsrError:
            if last and self._caching is not None:
                self._caching.forget_segment(stream, segment)
            raise

    def close_stream(self, stream: Hashable) -> None:
        """The stream ended: drop its queued work and its audio."""
        self.scheduler.cancel_stream(stream)
        self.store.drop_stream(stream)
        if self._caching is not None:
            self._caching.forget_stream(stream)

    def load(self) -> dict[str, Any]:
        """Worker-wide load figures (LoadReport fields, less the worker id)."""
        return {
            "active_streams": self.admission.active,
            "max_streams": self.admission.max_streams,
            "queued_audio_seconds": self.scheduler.queued_audio_seconds,
            "accepting": self.admission.accepting,
            "engine": self.engine_name,
            "recent_rtf": self.scheduler.recent_rtf,
        }


def failed_future(err: BaseException) -> asyncio.Future:
    """A future that already holds `err` (retrieved, so it never logs as unhandled)."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(err)
    fut.exception()
    return fut
