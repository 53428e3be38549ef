"""The interface between the scheduler and a speech recognition engine.

The scheduler is the only caller: it hands an engine a batch of decode requests
gathered from many sessions and calls `decode_batch` on its single executor
thread, so engines need no locking and may keep device state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

#: Sample rate every engine receives audio at; sessions resample to it.
MODEL_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class DecodeOptions:
    """What a session asks of the model, mapped from StreamingConfig."""

    #: Phrases to prefer (Fun-ASR-Nano puts them into its prompt).
    hotwords: tuple[str, ...] = ()
    #: Model language name ("中文", "英文", ...) or None to let the model decide.
    language: str | None = None
    #: Inverse text normalization.
    itn: bool = True


@dataclass(frozen=True)
class SegmentRef:
    """Which open segment a request's audio comes from (set by EngineCore, not by sessions).

    An engine may keep per-segment work (Fun-ASR-Nano keeps fbank frames) between the
    requests of one segment: a segment's audio only grows, and (stream, segment) is never
    reused for other audio within a worker.
    """

    #: The stream's key in the engine (unique among the worker's open streams).
    stream: Hashable
    #: The segment's id within its stream.
    segment: int
    #: Samples from the segment's first sample to the request's first (0: from its start).
    offset: int = 0


@dataclass(frozen=True)
class DecodeRequest:
    """One utterance (a segment or the open part of one) to transcribe."""

    #: Mono float32 samples in [-1, 1] at MODEL_SAMPLE_RATE.
    audio: np.ndarray
    options: DecodeOptions
    #: "final" decodes a closed segment; "partial" a hypothesis of an open one
    #: (engines may decode partials more cheaply, e.g. with fewer new tokens).
    kind: Literal["final", "partial"] = "final"
    #: Text of the segment already agreed (emitted) by earlier partials. Partial decodes
    #: force it into the answer, so only the unstable tail after it is generated; a
    #: result's text then starts with it. Empty for finals, which decode the whole
    #: segment afresh (the 2pass correction).
    prefix: str = ""
    #: The open segment the audio comes from, or None (engines then compute from the audio
    #: alone). A final is its segment's last request.
    segment: SegmentRef | None = None


@dataclass(frozen=True)
class TokenTime:
    """A token and its time span in ms, relative to the request's first sample."""

    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class DecodeResult:
    """The transcript of one DecodeRequest."""

    text: str
    tokens: tuple[TokenTime, ...] = field(default_factory=tuple)


@dataclass
class DecodeWork:
    """Cumulative work an engine has done, by request kind ("final", "partial").

    Hardware-independent cost measures for benchmarks and metrics: decoder tokens
    generated (stop tokens included) and prefilled (prompt, audio frames, forced prefix
    and draft), and seconds of audio run through the audio encoder. Draft tokens (a
    segment's previous answer, verified in the prefill) count as prefilled; those the
    decoder accepted are tokens of the answer that cost no decoder step.
    """

    requests: dict[str, int] = field(default_factory=dict)
    audio_seconds: dict[str, float] = field(default_factory=dict)
    prefilled_tokens: dict[str, int] = field(default_factory=dict)
    generated_tokens: dict[str, int] = field(default_factory=dict)
    #: CPU seconds (batch thread) turning requests into model inputs: prompt ids and fbank.
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    #: Draft tokens prefilled for verification, and those accepted.
    draft_proposed: dict[str, int] = field(default_factory=dict)
    draft_accepted: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, *, audio_seconds: float = 0.0, prefilled: int = 0, generated: int = 0,
            requests: int = 0, prepare_seconds: float = 0.0, draft_proposed: int = 0,
            draft_accepted: int = 0) -> None:
        """Count work of one request kind."""
        self.draft_proposed[kind] = self.draft_proposed.get(kind, 0) + draft_proposed
        self.draft_accepted[kind] = self.draft_accepted.get(kind, 0) + draft_accepted
        self.requests[kind] = self.requests.get(kind, 0) + requests
        self.prepare_seconds[kind] = self.prepare_seconds.get(kind, 0.0) + prepare_seconds
        self.audio_seconds[kind] = self.audio_seconds.get(kind, 0.0) + audio_seconds
        self.prefilled_tokens[kind] = self.prefilled_tokens.get(kind, 0) + prefilled
        self.generated_tokens[kind] = self.generated_tokens.get(kind, 0) + generated


class Engine(Protocol):
    """A speech recognizer that decodes batches of utterances."""

    #: Short name reported in LoadReport.engine ("funasr-nano", "fake").
    name: str
    #: Cumulative work since warmup (for metrics and benchmarks; read, never reset, by them).
    work: DecodeWork

    def warmup(self) -> None:
        """Run a representative decode so the first real request is not slow.

        Called once before the worker reports SERVING.
        """

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Transcribe every request; return exactly one result per request, in order.

        Raises on failure; the scheduler fans the exception out to every
        member of the batch. Called only from the scheduler's executor thread.
        """
        ...


@runtime_checkable
class SegmentCachingEngine(Protocol):
    """An engine that keeps work per open segment (see SegmentRef) and must hear when it ends.

    It frees a segment's state itself after preparing the segment's final; these notices
    cover segments and streams that end otherwise (a refused final, a closed stream). Safe
    to call from any thread: the engine applies them on its batch thread.
    """

    @property
    def segment_align(self) -> int:
        """Samples: a request whose audio starts a multiple of this after its segment's start
        can reuse the segment's state (EngineCore moves windowed starts back onto this grid)."""
        ...

    def forget_segment(self, stream: Hashable, segment: int) -> None:
        """The segment will not be decoded again."""
        ...

    def forget_stream(self, stream: Hashable) -> None:
        """The stream ended: none of its segments will be decoded again."""
        ...


@runtime_checkable
class SteppingEngine(Protocol):
    """An engine that decodes at iteration level (continuous batching).

    The scheduler adds requests between decoder steps and takes each result as soon as
    its request finishes, so a short partial never waits for a long final. Like
    `decode_batch`, these run only on the scheduler's executor thread.
    """

    def add_requests(self, requests: Sequence[DecodeRequest]) -> list[int]:
        """Start decoding requests (encode + prefill); returns one handle per request."""
        ...

    def step(self) -> list[tuple[int, DecodeResult]]:
        """Advance every running request by one decoder step; (handle, result) of those done.

        Raises on failure; the requests running at that moment are then forgotten
        (the scheduler fails their tickets).
        """
        ...

    @property
    def active(self) -> int:
        """Requests started and not yet returned by `step`."""
        ...
