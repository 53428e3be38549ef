"""PCM handling: validation, int16 -> float, 8 kHz -> 16 kHz, a positioned buffer."""

from __future__ import annotations

import numpy as np

from .engine.base import MODEL_SAMPLE_RATE
from .errors import InvalidAudio

#: Sample rates a session may declare.
SUPPORTED_RATES = (8000, 16000)


def pcm16le_to_float(data: bytes) -> np.ndarray:
    """Signed 16-bit little-endian mono PCM -> float32 in [-1, 1).

    Raises InvalidAudio on an odd byte count (half a sample).
    """
    if len(data) % 2:
        raise InvalidAudio(
            f"audio has an odd byte count ({len(data)}): PCM16LE needs 2 bytes per sample"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _design_halfband(taps: int = 48) -> np.ndarray:
    """Kaiser-windowed sinc low-pass at a quarter of the output rate (4 kHz of 16 kHz)."""
    n = np.arange(taps) - (taps - 1) / 2.0
    h = 0.5 * np.sinc(0.5 * n) * np.kaiser(taps, 8.0)
    return (h / h.sum()).astype(np.float64)


class Upsampler2x:
    """Streaming 8 kHz -> 16 kHz polyphase FIR resampler.

    Deterministic and chunking-independent up to float rounding: each output
    sample depends only on the input samples before it (the filter history is
    carried between chunks), so feeding 20 ms or 2 s chunks gives the same
    signal. Output length is exactly twice the input length; the group delay is
    under 2 ms.
    """

    def __init__(self, taps: int = 48) -> None:
        h = _design_halfband(taps) * 2.0  # gain 2 compensates the inserted zeros
        self._phases = (h[0::2].copy(), h[1::2].copy())
        self._hist = np.zeros(len(self._phases[0]) - 1, dtype=np.float64)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample one chunk of float samples."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        ext = np.concatenate([self._hist, x.astype(np.float64)])
        out = np.empty(2 * len(x), dtype=np.float64)
        out[0::2] = np.convolve(ext, self._phases[0], mode="valid")
        out[1::2] = np.convolve(ext, self._phases[1], mode="valid")
        self._hist = ext[len(ext) - len(self._hist) :]
        return out.astype(np.float32)


class AudioBuffer:
    """Samples addressed by absolute position (16 kHz samples since stream start).

    Appends are O(1) amortized; `trim_before` drops audio no segment can need.
    """

    def __init__(self) -> None:
        self._data = np.zeros(MODEL_SAMPLE_RATE * 4, dtype=np.float32)
        self._base = 0  # absolute position of self._data[0]
        self._len = 0  # valid samples in self._data

    @property
    def end(self) -> int:
        """Absolute position after the last sample."""
        return self._base + self._len

    @property
    def start(self) -> int:
        """Absolute position of the oldest kept sample."""
        return self._base

    def append(self, x: np.ndarray) -> None:
        """Add samples at the end."""
        need = self._len + len(x)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len : need] = x
        self._len = need

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of [start, end), clamped to what is kept."""
        s = max(start, self._base) - self._base
        e = min(end, self.end) - self._base
        if e <= s:
            return np.zeros(0, dtype=np.float32)
        return self._data[s:e].copy()

    def trim_before(self, pos: int) -> None:
        """Forget samples before absolute position `pos`."""
        drop = min(max(pos - self._base, 0), self._len)
        if drop == 0:
            return
        # Compact only when it frees at least half, so trimming stays O(1) amortized.
        if drop * 2 >= self._len or drop >= MODEL_SAMPLE_RATE * 10:
            self._data[: self._len - drop] = self._data[drop : self._len]
            self._len -= drop
            self._base += drop
