"""PCM conversion, 8 kHz -> 16 kHz resampling and the positioned audio buffer."""

from __future__ import annotations

import numpy as np
import pytest

from asr_worker.audio import AudioBuffer, Upsampler2x, pcm16le_to_float
from asr_worker.errors import InvalidAudio

pytestmark = pytest.mark.timeout(10)


def test_pcm16le_conversion_and_odd_byte_count():
    x = pcm16le_to_float(np.array([0, 16384, -32768], dtype="<i2").tobytes())
    assert x.dtype == np.float32 and list(x) == [0.0, 0.5, -1.0]
    with pytest.raises(InvalidAudio, match="odd byte count"):
        pcm16le_to_float(b"\x00\x01\x02")


def test_upsampler_is_deterministic_chunk_independent_and_keeps_the_tone():
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = Upsampler2x().process(tone)
    up = Upsampler2x()
    parts = np.concatenate([up.process(tone[i:i + 137]) for i in range(0, len(tone), 137)])
    assert len(whole) == 16000
    assert np.allclose(whole, parts, atol=1e-6)
    assert np.array_equal(whole, Upsampler2x().process(tone))
    spectrum = np.abs(np.fft.rfft(whole[1000:]))
    peak_hz = np.argmax(spectrum) * 16000 / len(whole[1000:])
    assert abs(peak_hz - 440) < 2
    assert 0.45 < np.max(np.abs(whole[1000:])) < 0.55


def test_audio_buffer_positions_and_trim():
    buf = AudioBuffer()
    for i in range(100):
        buf.append(np.full(1000, i, dtype=np.float32))
    assert buf.end == 100_000
    assert list(buf.slice(4999, 5001)) == [4.0, 5.0]
    buf.trim_before(90_000)
    assert buf.start == 90_000
    assert list(buf.slice(0, 90_002)) == [90.0, 90.0]
    assert len(buf.slice(200_000, 300_000)) == 0
