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

A request's `prefix` (the agreed text of a partial) is honoured like a real engine
forcing it into the answer: the result starts with the prefix, and only the syllables
after its length come from the audio.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import numpy as np

from .base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest, DecodeResult, TokenTime

#: Syllables the fake engine "recognizes".
SYLLABLES = tuple("今天气很好我们去公园散步吧请把会议安排在下午三点阿里巴达摩院推出了新的语音识别模型")


class FakeEngine:
    """Fixed-cost, deterministic engine.

    Args:
        base_ms: cost of every decode_batch call, in ms.
        per_item_ms: additional cost per request in the batch, in ms.
        syllable_ms: audio per syllable, in ms.
        voice_rms: RMS (of float samples in [-1, 1]) above which a frame is voiced.
    """

    name = "fake"

    def __init__(
        self,
        base_ms: float = 20.0,
        per_item_ms: float = 5.0,
        *,
        syllable_ms: int = 200,
        voice_rms: float = 0.01,
    ) -> None:
        if base_ms < 0 or per_item_ms < 0:
            raise ValueError("fake engine costs must be >= 0")
        if syllable_ms <= 0:
            raise ValueError("syllable_ms must be > 0")
        self.base_ms = float(base_ms)
        self.per_item_ms = float(per_item_ms)
        self.syllable_ms = int(syllable_ms)
        self.voice_rms = float(voice_rms)
        #: Batch sizes of every decode_batch call, for tests and benchmarks.
        self.calls: list[int] = []
        self.warmed_up = False

    def warmup(self) -> None:
        """One decode of one second of silence, like a real engine's warmup."""
        self.decode_batch(
            [DecodeRequest(audio=np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32), options=DecodeOptions())]
        )
        self.calls.clear()
        self.warmed_up = True

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Sleep for the batch's cost, then transcribe each request."""
        self.calls.append(len(requests))
        cost_s = (self.base_ms + self.per_item_ms * len(requests)) / 1000.0
        if cost_s > 0:
            time.sleep(cost_s)
        return [self._with_prefix(self.transcribe(r.audio), r.prefix) for r in requests]

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
        tokens: list[TokenTime] = []
        for i in range(n):
            chunk = np.asarray(audio[i * frame : (i + 1) * frame], dtype=np.float32)
            if float(np.sqrt(np.mean(chunk * chunk))) <= self.voice_rms:
                continue
            q = np.clip(np.round(chunk * 32767.0), -32768, 32767).astype("<i2")
            syllable = SYLLABLES[zlib.crc32(q.tobytes()) % len(SYLLABLES)]
            tokens.append(TokenTime(syllable, i * self.syllable_ms, (i + 1) * self.syllable_ms))
        return DecodeResult(text="".join(t.text for t in tokens), tokens=tuple(tokens))
