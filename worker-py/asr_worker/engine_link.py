"""What a front (gRPC streams, sessions, VAD) needs from the engine side, as two narrow ports.

`EngineLink` is the worker-wide side (admission, readiness, load figures, change notices);
`StreamPort` is one stream's decode side (append segment audio, submit decodes by range, close).
Two implementations:

- `LocalEngineLink`: the EngineCore in the same process and event loop (tests, in-process
  benchmarks, `serve --front-processes 0`);
- `asr_worker.engine_client.EngineClient`: the EngineCore in the engine process, over ZeroMQ.

The session code is the same for both, so in-process tests exercise the production session path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import numpy as np

from .engine_core import EngineCore, failed_future
from .errors import AsrError


class StreamPort(Protocol):
    """One stream's access to the engine: its segments' audio and its decodes."""

    def append(self, segment: int, start: int, samples: np.ndarray) -> None:
        """New samples of open segment `segment`, from absolute 16 kHz position `start`."""
        ...

    def submit(
        self, segment: int, start: int, end: int, fields: dict[str, Any], *, last: bool
    ) -> asyncio.Future:
        """Decode [start, end) of `segment` with DecodeRequest `fields` (all but audio).

        The future resolves to a DecodeResult or fails with an AsrError (Overloaded when the
        engine's queue is full, InferenceFailed when the batch failed). `last` frees the
        segment's audio once it is taken (a final).
        """
        ...

    def close(self) -> None:
        """The stream ended: drop its queued work and audio; its futures are cancelled."""
        ...


class EngineLink(Protocol):
    """A front's view of the worker-wide engine side."""

    @property
    def ready(self) -> bool:
        """Whether the engine is warm (health follows this)."""
        ...

    async def admit(self) -> None:
        """Count one more stream worker-wide; raises the AsrError that refuses it."""
        ...

    def release(self) -> None:
        """An admitted stream ended."""
        ...

    def start_draining(self) -> None:
        """This worker drains: refuse new streams everywhere."""
        ...

    def load(self) -> dict[str, Any]:
        """Latest worker-wide load figures (LoadReport fields, less worker_id)."""
        ...

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when readiness or admission changes."""
        ...

    def open_stream(self, key: Hashable) -> StreamPort:
        """The decode port of a new stream; `key` is unique within this front."""
        ...


class LocalStreamPort:
    """StreamPort onto an EngineCore in the same event loop."""

    def __init__(self, core: EngineCore, key: Hashable) -> None:
        self._core = core
        self._key = key

    def append(self, segment: int, start: int, samples: np.ndarray) -> None:
        """See StreamPort."""
        self._core.append(self._key, segment, start, samples)

    def submit(
        self, segment: int, start: int, end: int, fields: dict[str, Any], *, last: bool
    ) -> asyncio.Future:
        """See StreamPort."""
        try:
            return self._core.submit(self._key, segment, start, end, fields, last=last).future
        except AsrError as err:
            return failed_future(err)

    def close(self) -> None:
        """See StreamPort."""
        self._core.close_stream(self._key)


class LocalEngineLink:
    """EngineLink onto an EngineCore in the same process (one front, no IPC)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    @property
    def ready(self) -> bool:
        """See EngineLink."""
        return self.core.admission.ready

    async def admit(self) -> None:
        """See EngineLink."""
        self.core.admission.admit()

    def release(self) -> None:
        """See EngineLink."""
        self.core.admission.release()

    def start_draining(self) -> None:
        """See EngineLink."""
        self.core.admission.start_draining()

    def load(self) -> dict[str, Any]:
        """See EngineLink."""
        return self.core.load()

    def on_change(self, listener: Callable[[], None]) -> None:
        """See EngineLink."""
        self.core.admission.on_change(listener)

    def open_stream(self, key: Hashable) -> StreamPort:
        """See EngineLink."""
        return LocalStreamPort(self.core, key)
