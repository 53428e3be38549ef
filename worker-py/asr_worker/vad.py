"""Streaming voice activity detection: speech probabilities + an endpointer.

Two parts, so that the cheap state machine is testable without a model:

- `SileroVad` / `SileroStream`: silero-vad v6, which ships inside the
  silero-vad wheel (no model hub) both as TorchScript and as ONNX; `SileroVad`
  runs either (torch, or onnxruntime with one thread). The weights are loaded
  once per process and shared; the model's recurrent state and its 64-sample
  context live in each `SileroStream`, one per session, so no state is shared
  across sessions. The network is called as a pure function
  `(window+context, state) -> (probability, state)` on a batch of streams,
  fed 512-sample windows (32 ms at 16 kHz) as audio arrives, any chunk size.
- `FsmnVad` / `FsmnStream`: FunASR's fsmn-vad from a local model directory
  (`--vad fsmn --vad-model-dir`), the same interface: per-window speech
  probabilities from FunASR's streaming frontend + FSMN encoder, whose layer
  memories live in each stream so that one encoder pass serves a whole batch.
- `WindowBuffer`: the windowing every backend's stream shares.
- `Endpointer`: turns per-window probabilities into segment boundaries with
  hysteresis (start above `threshold`, end below `neg_threshold`), a minimum
  speech duration, a minimum silence duration, pre-roll / post-roll padding and
  the maximum segment length (forced close, reason MAX_LENGTH).

Cost (bench/vad_cost.py, docs/benchmarks.md "VAD cost"; single-threaded, µs of
CPU per stream-second on the busy 2-core CI box): silero on torch 15,000 for one
stream alone, 2,200 at 16 streams per call, 1,000 at 200 (TorchScript's per-call
overhead dominates small calls); on onnxruntime 5,600 alone but 2,000 at 200
(slower convolutions). So `SileroVad` defaults to both, picked per step by batch
size, and each front scores the windows of all its streams together, once per
tick of at most 64 ms (`VadBatcher`), on its event loop. fsmn-vad costs 20,000-70,000,
mostly FunASR's per-stream online fbank frontend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .engine.base import MODEL_SAMPLE_RATE
from .errors import ModelLoadError, StartupError

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


class VadStream(Protocol):
    """One session's VAD state: turns audio into windows and speech probabilities."""

    def take_windows(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; return the complete windows not yet scored."""
        ...

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Score the windows these samples complete, on the calling thread."""
        ...


class VadModel(Protocol):
    """Shared VAD weights (SileroVad, FsmnVad): makes per-session streams, scores batches."""

    def new_stream(self) -> VadStream:
        """A fresh per-session state."""
        ...

    def score(self, jobs: list[tuple[Any, np.ndarray]]) -> list[np.ndarray]:
        """Probabilities for each (stream, windows) job, in order."""
        ...


class WindowBuffer:
    """Cuts one stream's audio into whole 512-sample windows, keeping the remainder.

    Shared by every backend's stream so that all of them window audio the same
    way (any chunk size in, the same windows out).
    """

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def take(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz float32 samples; return the completed [n, 512] windows."""
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(buf) // WINDOW_SAMPLES
        self._pending = buf[n * WINDOW_SAMPLES :]
        return buf[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)


def score_alone(vad: VadModel, stream: Any, samples: np.ndarray) -> np.ndarray:
    """`VadStream.process` for every backend: window the samples, score them as a batch of one."""
    windows = stream.take_windows(samples)
    if len(windows) == 0:
        return np.zeros(0, dtype=np.float32)
    return vad.score([(stream, windows)])[0]


#: Runtimes `SileroVad` can run the same silero-vad v6 network on; "auto" uses
#: onnxruntime for small steps and torch for large ones (cheapest at each size).
SILERO_RUNTIMES = ("auto", "torch", "onnx")
#: "auto": steps of at least this many streams run on torch, smaller ones on
#: onnxruntime. Single-threaded, onnxruntime costs about a third of torch for
#: one stream (no TorchScript interpreter overhead: ~60 vs ~290 µs per call) but
#: about twice as much per row (~53 vs ~24 µs, its convolutions); on a quiet core
#: they meet between 10 and 12 streams (2026-11-30, bench/vad_cost.py --batch-sizes
#: 4,8,10,12,16,24: B=12 torch 2,043 vs onnx 2,164 µs per stream-second, B=10 2,339
#: vs 2,127; docs/benchmarks.md, "VAD cost").
SILERO_TORCH_FROM = 12
#: Size of silero's recurrent state per stream (2 x 128: LSTM h and c).
_SILERO_STATE = (2, 128)
#: Samples of the previous window silero-vad v6 prepends to each 16 kHz window.
SILERO_CONTEXT = 64


class SileroVad:
    """silero-vad v6, loaded once per process and shared by all streams.

    Two runtimes of the same network, both shipped in the silero-vad wheel:
    ``torch`` runs its TorchScript file (`silero_vad.jit`), ``onnx`` runs
    `silero_vad.onnx` on onnxruntime with one intra-op thread (fronts are one
    process per core); ``auto`` (the default) loads both and picks per step by
    batch size. Both compute the same function (to ~1e-7)
    ``([B, 64 + 512] context+window, [2, B, 128] state) -> ([B, 1] probability,
    [2, B, 128] state)``; the 64-sample context and the state of each stream
    live in its `SileroStream`, so a batch can hold any set of streams and a
    stream can move between runtimes from one step to the next.

    `score()` runs many streams' windows as one batch: per step, the next window
    of every stream that has one is stacked with its context and state into one
    call. Rows are independent, so the result equals scoring each stream alone;
    the cost of a step hardly grows with B, which is what makes VAD for
    hundreds of streams cheap (docs/benchmarks.md, "VAD cost").

    Args:
        runtime: "auto", "torch" or "onnx" (see SILERO_RUNTIMES).
        threads: onnxruntime intra-op threads (torch follows torch.set_num_threads).
        torch_from: "auto" only: steps with at least this many streams run on torch.
    """

    #: Backend name as `--vad` spells it: "silero" (auto), "silero-torch", "silero-onnx".
    name = "silero"

    def __init__(
        self, runtime: str = "auto", *, threads: int = 1, torch_from: int = SILERO_TORCH_FROM
    ) -> None:
        if runtime not in SILERO_RUNTIMES:
            raise StartupError(f"unknown silero runtime {runtime!r}; use {', '.join(SILERO_RUNTIMES)}")
        self.runtime = runtime
        self.name = "silero" if runtime == "auto" else f"silero-{runtime}"
        try:
            onnx = _silero_onnx(threads) if runtime in ("auto", "onnx") else None
            jit = _silero_torch() if runtime in ("auto", "torch") else None
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"cannot load silero-vad ({runtime}): {exc}") from exc
        self._run_small = onnx or jit
        self._run_large = jit or onnx
        #: Steps with at least this many streams use the large-batch runtime.
        self.torch_from = max(torch_from, 1) if runtime == "auto" else 1
        # First calls build/optimize the graphs; do it here, not in a session.
        silence = np.zeros((2, WINDOW_SAMPLES), dtype=np.float32)
        for rows in {1, self.torch_from}:
            self.score([(self.new_stream(), silence) for _ in range(rows)])

    def new_stream(self) -> SileroStream:
        """Fresh per-stream state."""
        return SileroStream(self)

    def score(self, jobs: list[tuple[SileroStream, np.ndarray]]) -> list[np.ndarray]:
        """Speech probabilities of each job's [n, 512] windows, advancing each stream's state.

        One model call per step (per window position), whatever the number of
        streams. A stream must appear at most once per call. Thread-safe across
        calls on different streams (the weights are read-only).
        """
        ctx = SILERO_CONTEXT
        results = [np.empty(len(w), dtype=np.float32) for _, w in jobs]
        steps = max((len(w) for _, w in jobs), default=0)
        for step in range(steps):
            idx = [j for j, (_, w) in enumerate(jobs) if len(w) > step]
            streams = [jobs[j][0] for j in idx]
            inp = np.empty((len(idx), ctx + WINDOW_SAMPLES), dtype=np.float32)
            inp[:, :ctx] = [s.context for s in streams]
            inp[:, ctx:] = [jobs[j][1][step] for j in idx]
            state = np.stack([s.state for s in streams], axis=1)
            run = self._run_large if len(idx) >= self.torch_from else self._run_small
            probs, new_state = run(inp, state)
            for k, (j, s) in enumerate(zip(idx, streams, strict=True)):
                # Copies: a view would keep the whole batch's arrays alive per stream.
                s.state = new_state[:, k].copy()
                s.context = inp[k, -ctx:].copy()
                results[j][step] = probs[k]
        return results


_Runner = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _silero_torch() -> _Runner:
    """silero's TorchScript network as a numpy function."""
    import torch

    # Importing silero_vad calls torch.set_num_threads(1) for the whole process; keep the
    # caller's setting (`serve --torch-threads` also sizes the engine in one-process mode).
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad

    torch.set_num_threads(threads)

    model = load_silero_vad()._model  # the stateless inner network, 16 kHz
    if int(model.context_size_samples) != SILERO_CONTEXT:
        raise StartupError(f"unexpected silero-vad context {model.context_size_samples}")

    def run(inp: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out, new_state = model(torch.from_numpy(inp), torch.from_numpy(state))
        return out.numpy().reshape(-1), new_state.numpy()

    return run


def _silero_onnx(threads: int) -> _Runner:
    """silero's ONNX network on onnxruntime's CPU provider as a numpy function."""
    import importlib.util

    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the file carries unused initializers ORT warns about
    # Found, not imported: importing the silero_vad package imports torch, which an
    # onnxruntime-only process does not need.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError("silero-vad is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sr = np.array(MODEL_SAMPLE_RATE, dtype=np.int64)

    def run(inp: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, new_state = session.run(None, {"input": inp, "state": state, "sr": sr})
        return out.reshape(-1), new_state

    return run


class SileroStream:
    """One stream's silero state: recurrent state, context and unconsumed samples."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self._windows = WindowBuffer()
        #: silero's recurrent state [2, 128], advanced by `SileroVad.score`.
        self.state = np.zeros(_SILERO_STATE, dtype=np.float32)
        #: The last 64 samples scored, prepended to the next window.
        self.context = np.zeros(SILERO_CONTEXT, dtype=np.float32)

    def take_windows(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz float32 samples; return the completed [n, 512] windows."""
        return self._windows.take(samples)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Append samples and score the completed windows on the calling thread."""
        return score_alone(self._vad, self, samples)


class VadObserver(Protocol):
    """What a VadBatcher reports (asr_worker.metrics.WorkerMetrics is one)."""

    def vad_batch(self, seconds: float, streams: int, windows: int) -> None:
        """One batched VAD call took `seconds` for `windows` windows of `streams` streams."""

    def audio_in(self, samples: int) -> None:
        """A stream delivered `samples` samples at 16 kHz."""


class VadClient(Protocol):
    """A stream whose windows a VadBatcher scores (Session is one)."""

    #: The stream's VAD state (from `VadModel.new_stream`).
    vad_stream: VadStream

    def vad_scored(self, probs: np.ndarray) -> None:
        """The probabilities of the client's next windows, in order (called on the loop)."""

    def vad_failed(self, exc: BaseException) -> None:
        """Scoring this client's windows raised `exc` (the model failed)."""


class _Waiter:
    """A VadClient for `VadBatcher.score`: collects probabilities for one awaited call."""

    def __init__(self, stream: VadStream, need: int) -> None:
        self.vad_stream = stream
        self.need = need
        self.parts: list[np.ndarray] = []
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def vad_scored(self, probs: np.ndarray) -> None:
        self.parts.append(probs)
        self.need -= len(probs)
        if self.need <= 0 and not self.future.done():
            self.future.set_result(np.concatenate(self.parts))

    def vad_failed(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class VadBatcher:
    """Scores the windows of all streams of a front together, once per tick, on the loop.

    Streams `push` the windows their audio completed and go on reading; the
    batcher holds them for at most `tick_s` after the first one arrived, then
    scores every stream's pending windows in ONE `VadModel.score` call and hands
    each client its probabilities (`VadClient.vad_scored`). Holding one tick is
    what makes the batches large on a front that is not saturated: with 60 ms
    frames arriving evenly, a 64 ms tick batches every stream of the front in one
    call, where "score what queued while the last call ran" found 1-4 streams per
    call on an idle core; per stream-second that is 2.0 instead of 8.3 ms of CPU at
    50 paced streams, 3.5 with a 32 ms tick (bench/vad_cost.py --paced, docs/benchmarks.md).
    The call runs on the event loop itself: a hand-off to a VAD thread per batch
    cost more than it overlapped (the GIL is released inside the model anyway).

    A tick ends early once `full_batch` streams are pending: from there on a larger
    call costs about as much per stream (torch silero's per-row cost is flat from
    ~64 rows), so waiting longer would only add latency.

    A stream with a backlog (a client sending faster than real time) gets at most
    `max_steps` windows per call, and the next call follows at once while any
    backlog remains, so one fast stream neither stalls the others nor waits a tick
    per chunk. `settle(client)` scores one client's pending windows immediately
    (before a control request that must see all earlier audio).

    Args:
        vad: the shared weights.
        tick_s: how long the first pending window may wait for others (0: score
            whatever is pending as soon as the loop is free).
        full_batch: streams pending at which a tick ends at once.
        max_steps: windows per stream per call.
        observer: told the time of every batched call and every stream's audio (metrics).
    """

    def __init__(
        self,
        vad: VadModel,
        *,
        tick_s: float = 0.064,
        full_batch: int = 64,
        max_steps: int = 32,
        observer: VadObserver | None = None,
    ) -> None:
        self._vad = vad
        self._observer = observer
        self.tick_s = max(tick_s, 0.0)
        self.full_batch = max(full_batch, 1)
        self.max_steps = max_steps
        # Pending windows per client, in arrival order (dicts keep insertion order).
        self._pending: dict[VadClient, list[np.ndarray]] = {}
        self._since = 0.0  # loop time the oldest pending window arrived
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        #: Batch sizes (streams per call) of recent calls, for diagnostics.
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)

    def start(self) -> None:
        """Start the batching task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vad-batcher")

    async def stop(self) -> None:
        """Stop; pending windows are dropped and awaiting `score` callers cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        clients, self._pending = list(self._pending), {}
        for client in clients:
            if isinstance(client, _Waiter) and not client.future.done():
                client.future.cancel()

    def audio_in(self, samples: int) -> None:
        """Count a stream's incoming audio (metrics)."""
        if self._observer is not None:
            self._observer.audio_in(samples)

    def push(self, client: VadClient, windows: np.ndarray) -> None:
        """Queue a client's newly completed [n, 512] windows for the next call."""
        if len(windows) == 0:
            return
        if self._task is None:
            # Not started (a unit test, a tool): score at once, alone.
            self._score([(client, windows)])
            return
        if not self._pending:
            self._since = asyncio.get_running_loop().time()
            self._wake.set()
        queued = self._pending.get(client)
        if queued is None:
            self._pending[client] = [windows]
            if len(self._pending) >= self.full_batch:
                self._step()  # a full batch: nothing to gain by waiting for the tick
        else:
            queued.append(windows)

    def backlog(self, client: VadClient) -> int:
        """Windows of `client` waiting to be scored."""
        return sum(len(w) for w in self._pending.get(client, ()))

    def settle(self, client: VadClient) -> None:
        """Score everything `client` has pending now, alone (its other clients wait their tick)."""
        queued = self._pending.pop(client, None)
        if queued:
            self._score([(client, np.concatenate(queued) if len(queued) > 1 else queued[0])])

    def forget(self, client: VadClient) -> None:
        """Drop a client's pending windows (its stream ended)."""
        self._pending.pop(client, None)

    async def score(self, stream: VadStream, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the windows these samples complete (possibly none), batched.

        The awaitable form of `push` for callers without a VadClient (benchmarks, tools).
        """
        self.audio_in(len(samples))
        windows = stream.take_windows(samples)
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        waiter = _Waiter(stream, len(windows))
        self.push(waiter, windows)
        return await waiter.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            delay = self._since + self.tick_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._step()
            # Reads that arrived meanwhile go first; a remaining backlog is scored right after.
            await asyncio.sleep(0)

    def _step(self) -> None:
        pending, self._pending = self._pending, {}
        jobs: list[tuple[VadClient, np.ndarray]] = []
        for client, queued in pending.items():
            windows = np.concatenate(queued) if len(queued) > 1 else queued[0]
            if len(windows) > self.max_steps:
                self._pending[client] = [windows[self.max_steps :]]
                windows = windows[: self.max_steps]
            jobs.append((client, windows))
        if self._pending:
            self._since = asyncio.get_running_loop().time() - self.tick_s  # backlog: no wait
        self._score(jobs)

    def _score(self, jobs: list[tuple[VadClient, np.ndarray]]) -> None:
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        started = time.perf_counter()
        try:
            results = self._vad.score([(client.vad_stream, windows) for client, windows in jobs])
        except Exception as exc:  # a VAD failure ends the streams that asked
            for client, _ in jobs:
                self._pending.pop(client, None)
                client.vad_failed(exc)
            return
        if self._observer is not None:
            windows = sum(len(w) for _, w in jobs)
            self._observer.vad_batch(time.perf_counter() - started, len(jobs), windows)
        for (client, _), probs in zip(jobs, results, strict=True):
            try:
                client.vad_scored(probs)
            except Exception as exc:  # a bug in one stream's handling ends that stream only
                self._pending.pop(client, None)
                client.vad_failed(exc)


#: Files a FunASR fsmn-vad model directory must hold.
FSMN_FILES = ("config.yaml", "model.pt", "am.mvn")
#: fsmn-vad's own rule calls a frame speech when P(speech) >= P(silence) +
#: speech_noise_thres (0.6 in the released config), i.e. P(speech) >= 0.8; the
#: CLI uses this as the default `--vad-threshold` for `--vad fsmn`.
FSMN_DEFAULT_THRESHOLD = 0.8


def validate_fsmn_dir(model_dir: Path | None) -> Path:
    """Cheap checks of an fsmn-vad directory; raises ModelLoadError (one line)."""
    if model_dir is None:
        raise ModelLoadError("fsmn-vad needs --vad-model-dir (a FunASR fsmn-vad model directory)")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"fsmn-vad model directory {str(model_dir)!r} does not exist")
    missing = [f for f in FSMN_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"fsmn-vad model directory {str(model_dir)!r} is incomplete: missing {', '.join(missing)}"
        )
    return model_dir.resolve()


class FsmnVad:
    """FunASR's fsmn-vad (FsmnVADStreaming + WavFrontendOnline) from a local directory.

    Built the way FunASR's AutoModel.build_model does it (registry classes from
    config.yaml, the frontend with the directory's am.mvn, weights from model.pt),
    with every path inside `model_dir`, so no model hub is consulted. Streaming
    uses FunASR's own caches: the online frontend's cache dict (fbank input
    remainder, LFR splice) and the FSMN encoder's cache dict (its memory blocks),
    one pair per `FsmnStream`.

    The encoder gives per-10-ms-frame posteriors; a frame's speech probability is
    1 - P(silence pdfs). Each 512-sample window reports the mean over the frames
    its samples completed (the frontend lags by its 25 ms frame and 2 LFR
    look-ahead frames, ~45 ms); a window that completes no frame repeats the last
    value. So it plugs into the same `Endpointer` and `VadBatcher` as silero.
    FunASR's own segmentation state machine is not used: the worker's endpointer
    owns hysteresis, minimum speech/silence, padding and the length cap.
    """

    name = "fsmn"

    def __init__(self, model_dir: Path | None) -> None:
        model_dir = validate_fsmn_dir(model_dir)
        try:
            import torch
            import yaml

            # FunASR prints an ffmpeg notice on import; start-up errors must stay one line.
            with contextlib.redirect_stdout(io.StringIO()):
                import funasr.frontends.wav_frontend  # registers WavFrontendOnline
                import funasr.models.fsmn_vad_streaming.model  # noqa: F401  (registers the model)
                from funasr.register import tables
        except ImportError as exc:  # pragma: no cover - funasr is a dependency
            raise ModelLoadError(f"fsmn-vad needs funasr: {exc}") from exc
        try:
            cfg = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
            if not isinstance(cfg, dict) or not cfg.get("encoder_conf"):
                raise ValueError("config.yaml has no encoder_conf")
            frontend_conf = dict(cfg.get("frontend_conf") or {})
            frontend_conf["cmvn_file"] = str(model_dir / "am.mvn")
            frontend_conf["dither"] = 0.0  # inference never dithers
            frontend_cls = tables.frontend_classes.get(cfg.get("frontend", "WavFrontendOnline"))
            model_cls = tables.model_classes.get(cfg.get("model", "FsmnVADStreaming"))
            if frontend_cls is None or model_cls is None:
                raise ValueError(
                    f"unknown frontend/model {cfg.get('frontend')!r}/{cfg.get('model')!r}"
                )
            self._frontend = frontend_cls(**frontend_conf)
            model = model_cls(
                encoder=cfg.get("encoder", "FSMN"),
                encoder_conf=cfg.get("encoder_conf") or {},
                **(cfg.get("model_conf") or {}),
            )
            state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:300]
            raise ModelLoadError(
                f"cannot load fsmn-vad from {str(model_dir)!r}: {type(exc).__name__}: {msg}"
            ) from exc
        self._torch = torch
        self._model = model.eval()
        self.sample_rate = int(getattr(self._frontend, "fs", MODEL_SAMPLE_RATE))
        if self.sample_rate != MODEL_SAMPLE_RATE:
            raise ModelLoadError(f"fsmn-vad model is for {self.sample_rate} Hz; 16000 Hz needed")
        self.sil_pdf_ids = list(model.vad_opts.sil_pdf_ids)
        enc = self._model.encoder
        blocks = list(getattr(enc, "fsmn", []))
        if not blocks or any(
            getattr(b.fsmn_block, "conv_left", None) is None or b.fsmn_block.conv_right is not None
            for b in blocks
        ):
            raise ModelLoadError(
                f"fsmn-vad from {str(model_dir)!r}: streaming needs a causal FSMN encoder "
                "(lorder set, rorder 0), as in the released model"
            )
        #: Per FSMN layer: (projection width, frames of left memory).
        self.memory_shape = (
            len(blocks),
            blocks[0].fsmn_block.dim,
            (blocks[0].lorder - 1) * blocks[0].lstride,
        )
        self.new_stream().process(np.zeros(WINDOW_SAMPLES * 4, dtype=np.float32))

    def new_stream(self) -> FsmnStream:
        """Fresh per-stream caches."""
        return FsmnStream(self)

    def _features(self, stream: FsmnStream, window: np.ndarray) -> Any:
        """[T, D] LFR features of the frames this window completes (FunASR's online frontend)."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None]
        feats, _ = self._frontend(
            x, torch.tensor([x.shape[1]]), cache=stream.frontend_cache, is_final=False
        )
        if feats.numel() == 0:  # not a whole frame yet (shape varies then)
            return torch.zeros(0, self._model.encoder.input_dim)
        return feats[0]

    def _encode(self, feats: list[Any], streams: list[FsmnStream]) -> Any:
        """Frame posteriors [B, T_max, pdfs] of many streams' frames in one encoder pass.

        FunASR's FSMN.forward(feats, cache) takes one cache for the whole batch
        and keeps the last frames of the padded input as the next cache, so it
        cannot batch streams whose frame counts differ. This runs the same
        layers (FunASR's modules and weights) on the right-padded batch and
        keeps, per stream, the memory ending at its own last real frame. The
        encoder is causal (rorder 0, checked at load), so padding never reaches
        a real frame's output.
        """
        torch = self._torch
        enc = self._model.encoder
        lengths = [int(f.shape[0]) for f in feats]
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)  # [B, T, D]
        x = enc.relu(enc.in_linear2(enc.in_linear1(x)))
        memory = torch.stack([s.memory for s in streams])  # [B, layers, P, L]
        mem_len = memory.shape[-1]
        new_memory = torch.empty_like(memory)
        for i, block in enumerate(enc.fsmn):
            proj = block.linear(x).transpose(1, 2)  # [B, P, T]
            history = torch.cat((memory[:, i], proj), dim=2)  # [B, P, L + T]
            mixed = proj + block.fsmn_block.conv_left(history.unsqueeze(-1)).squeeze(-1)
            for b, n in enumerate(lengths):
                new_memory[b, i] = history[b, :, n : n + mem_len]
            x = block.relu(block.affine(mixed.transpose(1, 2)))
        x = enc.out_linear2(enc.out_linear1(x))
        if enc.use_softmax:
            x = enc.softmax(x)
        for b, s in enumerate(streams):
            s.memory = new_memory[b].clone()  # a view would keep the batch tensor alive
        return x

    def score(self, jobs: list[tuple[FsmnStream, np.ndarray]]) -> list[np.ndarray]:
        """Speech probabilities of each job's [n, 512] windows, advancing each stream.

        Same contract as `SileroVad.score`. FunASR's online frontend keeps one
        stream per cache, so features are made stream by stream (window by
        window, which fixes the frames each window reports); the encoder then
        runs once for all streams' frames of the batch.
        """
        torch = self._torch
        results = [np.empty(len(w), dtype=np.float32) for _, w in jobs]
        with torch.inference_mode():
            per_window: list[list[int]] = []
            feats, streams = [], []
            for stream, windows in jobs:
                parts = [self._features(stream, w) for w in windows]
                per_window.append([int(p.shape[0]) for p in parts])
                feats.append(torch.cat(parts) if parts else torch.zeros(0))
                streams.append(stream)
            active = [j for j, f in enumerate(feats) if f.shape[0]]
            frame_probs: dict[int, np.ndarray] = {}
            if active:
                post = self._encode([feats[j] for j in active], [streams[j] for j in active])
                sil = post[..., self.sil_pdf_ids].sum(dim=-1)
                speech = (1.0 - sil).clamp(0.0, 1.0).numpy()
                frame_probs = {j: speech[k] for k, j in enumerate(active)}
        for j, (stream, counts) in enumerate(zip(streams, per_window, strict=True)):
            at = 0
            for i, n in enumerate(counts):
                if n:  # a window that completes no frame repeats the last value
                    stream.last = float(frame_probs[j][at : at + n].mean())
                    at += n
                results[j][i] = stream.last
        return results


class FsmnStream:
    """One stream's fsmn-vad state: FunASR's frontend cache and the FSMN layers' memory."""

    def __init__(self, vad: FsmnVad) -> None:
        self._vad = vad
        self._windows = WindowBuffer()
        #: FunASR's online frontend cache dict (waveform remainder, LFR splice).
        self.frontend_cache: dict = {}
        #: Per FSMN layer, the projections of the last frames [layers, P, L].
        self.memory = vad._torch.zeros(vad.memory_shape)
        #: The last reported probability (repeated by windows that complete no frame).
        self.last = 0.0

    def take_windows(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz float32 samples; return the completed [n, 512] windows."""
        return self._windows.take(samples)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Append samples and score the completed windows on the calling thread."""
        return score_alone(self._vad, self, samples)
