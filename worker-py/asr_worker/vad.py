"""Streaming voice activity detection: speech probabilities + an endpointer.

Two parts, so that the cheap state machine is testable without a model:

- `SileroVad` / `SileroStream`: silero-vad's JIT model, which ships inside the
  silero-vad wheel (no model hub). The weights are loaded once per process and
  shared; the model's recurrent state and its 64-sample context live in each
  `SileroStream`, one per session, so no state is shared across sessions. The
  inner network is called as a pure function `(window+context, state) ->
  (probability, state)`, fed 512-sample windows (32 ms at 16 kHz) as audio
  arrives, any chunk size.
- `Endpointer`: turns per-window probabilities into segment boundaries with
  hysteresis (start above `threshold`, end below `neg_threshold`), a minimum
  speech duration, a minimum silence duration, pre-roll / post-roll padding and
  the maximum segment length (forced close, reason MAX_LENGTH).

Cost, measured on this project's 2-core CI box with torch.set_num_threads(1):
about 0.3 ms per window per stream (about 1 % of a core per real-time stream),
so a typical 60 ms chunk is scored inline on the event loop; chunks of more than
`inline_windows` windows (clients sending at full speed) are scored on a VAD
thread so the loop stays responsive.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine.base import MODEL_SAMPLE_RATE
from .errors import StartupError

#: Samples per VAD window at 16 kHz (silero's fixed size).
WINDOW_SAMPLES = 512
#: Milliseconds per VAD window.
WINDOW_MS = WINDOW_SAMPLES * 1000 // MODEL_SAMPLE_RATE


@dataclass(frozen=True)
class VadConfig:
    """Endpointing parameters (all durations in ms of audio)."""

    #: Probability at or above which a window is speech.
    threshold: float = 0.5
    #: Probability below which a window is silence (hysteresis); None = threshold - 0.15.
    neg_threshold: float | None = None
    #: Speech shorter than this does not open a segment.
    min_speech_ms: int = 250
    #: Silence at least this long closes a segment.
    min_silence_ms: int = 800
    #: A segment with less speech than `short_speech_ms` needs this much silence
    #: to close: a short lead phrase followed by a pause ("我想问，……") is
    #: usually the start of a sentence, not a whole one.
    short_silence_ms: int = 1700
    #: See short_silence_ms; 0 disables the rule.
    short_speech_ms: int = 2500
    #: Audio kept before the detected start and after the detected end.
    speech_pad_ms: int = 200
    #: Segments are force-closed at this length (reason MAX_LENGTH).
    max_segment_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("vad threshold must be in (0, 1)")
        neg = self.effective_neg_threshold
        if not 0.0 <= neg <= self.threshold:
            raise ValueError("vad neg_threshold must be in [0, threshold]")
        if self.min_speech_ms < 0 or self.min_silence_ms < WINDOW_MS or self.speech_pad_ms < 0:
            raise ValueError(
                f"vad durations must be >= 0 (min_silence_ms >= {WINDOW_MS})"
            )
        if self.short_silence_ms < self.min_silence_ms or self.short_speech_ms < 0:
            raise ValueError("vad short_silence_ms must be >= min_silence_ms")
        if self.max_segment_ms < 1000:
            raise ValueError("max_segment_ms must be >= 1000")

    @property
    def effective_neg_threshold(self) -> float:
        """The end-of-speech threshold."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


class EventKind(enum.Enum):
    """Kind of an endpointer event."""

    START = "start"
    END = "end"


@dataclass(frozen=True)
class VadEvent:
    """A segment boundary at an absolute 16 kHz sample position of the stream."""

    kind: EventKind
    #: Sample position (16 kHz, counted from the stream's first sample).
    sample: int
    #: For END: "vad" or "max_length".
    reason: str = "vad"


class Endpointer:
    """Per-stream segmentation state machine over per-window probabilities.

    `push(prob)` consumes the probability of the next 512-sample window and
    returns the events it caused (at most an END and a START: a forced close at
    the length cap reopens at once while speech continues). Positions are
    16 kHz samples from the stream's start; `window_end` is the position after
    the last consumed window.
    """

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self._neg = config.effective_neg_threshold
        self._pad = config.speech_pad_ms * MODEL_SAMPLE_RATE // 1000
        self._min_speech = config.min_speech_ms * MODEL_SAMPLE_RATE // 1000
        self._min_silence = config.min_silence_ms * MODEL_SAMPLE_RATE // 1000
        self._short_silence = config.short_silence_ms * MODEL_SAMPLE_RATE // 1000
        self._short_speech = config.short_speech_ms * MODEL_SAMPLE_RATE // 1000
        self._max_len = config.max_segment_ms * MODEL_SAMPLE_RATE // 1000
        #: Position after the last consumed window.
        self.window_end = 0
        #: Start of the open segment (None when silent).
        self.segment_start: int | None = None
        self._candidate: int | None = None
        self._silence_start: int | None = None
        #: End of the last closed segment; a new start never reaches before it.
        self._last_end = 0

    @property
    def in_speech(self) -> bool:
        """Whether a segment is open."""
        return self.segment_start is not None

    @property
    def tentative_start(self) -> int | None:
        """Start (with pre-roll) of speech not yet long enough to open a segment."""
        if self._candidate is None:
            return None
        return max(self._candidate - self._pad, self._last_end)

    def push(self, prob: float) -> list[VadEvent]:
        """Consume one window's speech probability."""
        w_start = self.window_end
        self.window_end = w_end = w_start + WINDOW_SAMPLES
        events: list[VadEvent] = []
        if self.segment_start is None:
            if prob >= self.config.threshold:
                if self._candidate is None:
                    self._candidate = w_start
                if w_end - self._candidate >= self._min_speech:
                    events.append(self.open(self.tentative_start or 0))
            elif prob < self._neg:
                self._candidate = None
            return events
        # In speech.
        if prob >= self.config.threshold:
            self._silence_start = None
        elif prob < self._neg and self._silence_start is None:
            self._silence_start = w_start
        if self._silence_start is not None and w_end - self._silence_start >= self._needed_silence():
            end = min(self._silence_start + self._pad, w_end)
            events.append(self.close(end, "vad"))
        elif w_end - self.segment_start >= self._max_len:
            events.append(self.close(w_end, "max_length"))
            if prob >= self._neg:
                events.append(self.open(w_end))
        return events

    def _needed_silence(self) -> int:
        assert self.segment_start is not None and self._silence_start is not None
        if self._silence_start - self.segment_start < self._short_speech:
            return self._short_silence
        return self._min_silence

    def open(self, start: int) -> VadEvent:
        """Open a segment at `start`."""
        self.segment_start = start
        self._candidate = None
        self._silence_start = None
        return VadEvent(EventKind.START, start)

    def close(self, end: int, reason: str) -> VadEvent:
        """Close the open segment at `end`."""
        self.segment_start = None
        self._candidate = None
        self._silence_start = None
        self._last_end = end
        return VadEvent(EventKind.END, end, reason)

    def flush_end(self, position: int) -> int:
        """Where the open segment ends if input stops at `position`.

        Trailing silence already seen (minus the post-roll) is not part of it.
        """
        if self._silence_start is not None:
            return min(self._silence_start + self._pad, position)
        return position

    def reset_round(self, position: int) -> None:
        """Forget open or tentative speech (after end of input at `position`)."""
        self.segment_start = None
        self._candidate = None
        self._silence_start = None
        self._last_end = max(self._last_end, position)


class SileroVad:
    """silero-vad's JIT weights, loaded once and shared by all streams.

    Args:
        inline_windows: a chunk of at most this many windows is scored on the
            calling thread (the event loop); bigger ones on a VAD thread.
    """

    name = "silero"

    def __init__(self, inline_windows: int = 8) -> None:
        import torch
        from silero_vad import load_silero_vad

        try:
            wrapper = load_silero_vad()
        except Exception as exc:
            raise StartupError(f"cannot load silero-vad weights: {exc}") from exc
        self._torch = torch
        self._model = wrapper._model  # the stateless inner network, 16 kHz
        self.context = int(self._model.context_size_samples)
        self.inline_windows = inline_windows
        # TorchScript modules are safe to call concurrently (no Python-side
        # state here: the recurrent state is passed in and out), but the first
        # call optimizes the graph; serialize it.
        self._warm = threading.Lock()
        with self._warm:
            self.new_stream().process(np.zeros(WINDOW_SAMPLES * 2, dtype=np.float32))

    def new_stream(self) -> SileroStream:
        """Fresh per-stream state."""
        return SileroStream(self)


class SileroStream:
    """One stream's silero state: recurrent state, context and unconsumed samples."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        torch = vad._torch
        self._state = torch.zeros(2, 1, 128)
        self._context = torch.zeros(1, vad.context)
        self._pending = np.zeros(0, dtype=np.float32)

    def windows_in(self, n_samples: int) -> int:
        """How many complete windows `process` would score for n more samples."""
        return (len(self._pending) + n_samples) // WINDOW_SAMPLES

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz float32 samples; return probabilities of completed windows."""
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(buf) // WINDOW_SAMPLES
        self._pending = buf[n * WINDOW_SAMPLES :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        torch = self._vad._torch
        model = self._vad._model
        probs = np.empty(n, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(buf[: n * WINDOW_SAMPLES])).reshape(n, -1)
        with torch.inference_mode():
            state, context = self._state, self._context
            for i in range(n):
                inp = torch.cat([context, x[i : i + 1]], dim=1)
                out, state = model(inp, state)
                context = inp[:, -self._vad.context :]
                probs[i] = float(out)
            self._state, self._context = state, context
        return probs


class FsmnVad:
    """Placeholder for FunASR's fsmn-vad backend (needs its weights on disk)."""

    name = "fsmn"

    def __init__(self, model_dir: Path | None) -> None:
        if model_dir is None:
            raise StartupError("fsmn-vad needs --vad-model-dir (a FunASR fsmn-vad model directory)")
        raise StartupError(
            "fsmn-vad backend is not implemented in this build; use --vad silero"
        )
