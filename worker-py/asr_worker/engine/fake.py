"""A fake engine for scheduler/gateway tests and load benchmarks. Never the default.

It costs a fixed time per call, `base_ms + per_item_ms * len(batch)`, spent in
`time.sleep` on the scheduler's executor thread (so it behaves like a device
call: it blocks the batch thread, not the event loop), and returns text derived
deterministically from the audio:

- the audio is cut into `syllable_ms` frames from the request's first sample;
- each complete frame whose RMS is above `voice_rms` yields one syllable, picked
  by a CRC32 of the frame's int16 samples; quiet frames yield nothing.

So silence decodes to "", the same audio always gives the same text, and the
text of a prefix of some audio is a prefix of the text of the whole — which is
what a streaming re-decoder converges to and what stable partials need.

For fault-injection tests only, `fail_every=N` makes every N-th decode_batch call raise
InjectedEngineFailure after its cost (an engine exception mid-batch); 0, the default, never.

A request's `prefix` (the agreed text of a partial) is honoured like a real engine
forcing it into the answer: the result starts with the prefix, and only the syllables
after its length come from the audio.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Sequence

import numpy as np

from .base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest, DecodeResult, DecodeWork, TokenTime

#: Syllables the fake engine "recognizes".
SYLLABLES = tuple("今天气很好我们去公园散步吧请把会议安排在下午三点阿里巴达摩院推出了新的语音识别模型")


class InjectedEngineFailure(RuntimeError):
    """The failure `fail_every` injects (tests and chaos runs only)."""


class FakeEngine:
    """Fixed-cost, deterministic engine.

    Args:
        base_ms: cost of every decode_batch call, in ms.
        per_item_ms: additional cost per request in the batch, in ms.
        syllable_ms: audio per syllable, in ms.
        voice_rms: RMS (of float samples in [-1, 1]) above which a frame is voiced.
        fail_every: tests only: every N-th decode_batch call raises InjectedEngineFailure
            (0 = never).
    """

    name = "fake"

    def __init__(
        self,
        base_ms: float = 20.0,
        per_item_ms: float = 5.0,
        *,
        syllable_ms: int = 200,
        voice_rms: float = 0.01,
        fail_every: int = 0,
    ) -> None:
        if base_ms < 0 or per_item_ms < 0:
            raise ValueError("fake engine costs must be >= 0")
        if fail_every < 0:
            raise ValueError("fake engine fail_every must be >= 0")
        self.fail_every = int(fail_every)
        self._batches = 0
        if syllable_ms <= 0:
            raise ValueError("syllable_ms must be > 0")
        self.base_ms = float(base_ms)
        self.per_item_ms = float(per_item_ms)
        self.syllable_ms = int(syllable_ms)
        self.voice_rms = float(voice_rms)
        #: Batch sizes of every decode_batch call, for tests and benchmarks.
        self.calls: list[int] = []
        #: Work counters as a real engine keeps them: one token per syllable generated
        #: (plus one end token per request), the prefix's characters as prefilled tokens.
        self.work = DecodeWork()
        self.warmed_up = False

    def warmup(self) -> None:
        """One decode of one second of silence, like a real engine's warmup."""
        self.decode_batch(
            [DecodeRequest(audio=np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32), options=DecodeOptions())]
        )
        self.calls.clear()
        self.work = DecodeWork()
        self._batches = 0  # injected failures count serving batches only
        self.warmed_up = True

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Sleep for the batch's cost, then transcribe each request."""
        self.calls.append(len(requests))
        cost_s = (self.base_ms + self.per_item_ms * len(requests)) / 1000.0
        if cost_s > 0:
            time.sleep(cost_s)
        self._batches += 1
        if self.fail_every and self.warmed_up and self._batches % self.fail_every == 0:
            raise InjectedEngineFailure(f"injected failure of batch {self._batches}")
        return [self._result(r) for r in requests]

    def _result(self, request: DecodeRequest) -> DecodeResult:
        """The request's (prefix-forced) result, its work counted."""
        result = self._with_prefix(self.transcribe(request.audio), request.prefix)
        self.work.add(
            request.kind,
            requests=1,
            audio_seconds=len(request.audio) / MODEL_SAMPLE_RATE,
            prefilled=len(request.prefix),
            generated=len(result.tokens) + 1,
        )
        return result

    @staticmethod
    def _with_prefix(result: DecodeResult, prefix: str) -> DecodeResult:
        """The result as a decode forced to start with `prefix` (one syllable per char)."""
        if not prefix or result.text.startswith(prefix):
            return result
        tail = result.tokens[len(prefix) :]
        return DecodeResult(text=prefix + "".join(t.text for t in tail), tokens=tail)

    def transcribe(self, audio: np.ndarray) -> DecodeResult:
        """The deterministic text of one utterance (no cost)."""
        frame = MODEL_SAMPLE_RATE * self.syllable_ms // 1000
        n = len(audio) // frame
        # All frames at once: per-frame numpy calls made this test double cost more CPU
        # than the worker code around it in the front-path benchmark.
        frames = np.asarray(audio[: n * frame], dtype=np.float32).reshape(n, frame)
        voiced = np.flatnonzero(np.sqrt(np.mean(frames * frames, axis=1)) > self.voice_rms)
        q = np.clip(np.round(frames[voiced] * 32767.0), -32768, 32767).astype("<i2")
        tokens: list[TokenTime] = []
        for row, i in zip(q, voiced.tolist(), strict=True):
            syllable = SYLLABLES[zlib.crc32(row.tobytes()) % len(SYLLABLES)]
            tokens.append(TokenTime(syllable, i * self.syllable_ms, (i + 1) * self.syllable_ms))
        return DecodeResult(text="".join(t.text for t in tokens), tokens=tuple(tokens))


class SteppingFakeEngine(FakeEngine):
    """The fake engine at iteration level (SteppingEngine), for scheduler and load tests.

    Like a real decoder it emits one syllable per step: a request takes one step per
    syllable of its (prefix-forced) text plus one for the end token, and leaves as soon
    as it is done. Each `step` costs `step_ms + per_item_ms * running` of sleep on the
    executor thread; `add_requests` costs `per_item_ms` per request (the prefill).

    Args:
        step_ms: cost of every step, in ms.
        per_item_ms: additional cost per running request per step, and per prefill, in ms.
        syllable_ms, voice_rms: as for FakeEngine.
    """

    def __init__(self, step_ms: float = 2.0, per_item_ms: float = 0.2, **kwargs) -> None:
        super().__init__(base_ms=step_ms, per_item_ms=per_item_ms, **kwargs)
        self._handles = itertools.count()
        #: handle -> [steps left, result]
        self._running: dict[int, list] = {}
        #: Running requests at every step, for tests and benchmarks.
        self.steps: list[int] = []

    @property
    def active(self) -> int:
        """Requests added and not yet returned by `step`."""
        return len(self._running)

    def warmup(self) -> None:
        """FakeEngine's warmup, with the step record cleared too."""
        super().warmup()
        self.steps.clear()

    def add_requests(self, requests: Sequence[DecodeRequest]) -> list[int]:
        """Start requests; their results are fixed now, delivered after their steps."""
        if self.per_item_ms * len(requests) > 0:
            time.sleep(self.per_item_ms * len(requests) / 1000.0)
        handles = []
        for r in requests:
            result = self._result(r)
            handle = next(self._handles)
            self._running[handle] = [len(result.tokens) + 1, result]
            handles.append(handle)
        return handles

    def step(self) -> list[tuple[int, DecodeResult]]:
        """One step for every running request; those whose last step it was are returned."""
        if not self._running:
            return []
        self.steps.append(len(self._running))
        time.sleep((self.base_ms + self.per_item_ms * len(self._running)) / 1000.0)
        done = []
        for handle, state in list(self._running.items()):
            state[0] -= 1
            if state[0] <= 0:
                done.append((handle, state[1]))
                del self._running[handle]
        return done

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """All requests to completion through add_requests and step."""
        self.calls.append(len(requests))
        handles = self.add_requests(requests)
        results: dict[int, DecodeResult] = {}
        while not all(h in results for h in handles):
            results.update(self.step())
        return [results[h] for h in handles]
