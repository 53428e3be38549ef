"""The fake engine's test-only failure injection (`serve --fake-fail-every N`), used by the
chaos harness to measure an engine exception mid-batch (docs/reliability.md)."""

from __future__ import annotations

import numpy as np
import pytest

from asr_worker.engine.base import DecodeOptions, DecodeRequest
from asr_worker.engine.fake import FakeEngine, InjectedEngineFailure


def _batch(n: int = 2) -> list[DecodeRequest]:
    return [DecodeRequest(audio=np.zeros(3200, dtype=np.float32), options=DecodeOptions()) for _ in range(n)]


def test_every_nth_batch_after_warmup_raises_and_the_others_decode():
    engine = FakeEngine(0, 0, fail_every=3)
    engine.warmup()  # never fails: warmup happens before the worker serves
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(len(engine.decode_batch(_batch())))
        except InjectedEngineFailure:
            outcomes.append("failed")
    assert outcomes == [2, 2, "failed", 2, 2, "failed"]


def test_off_by_default_and_negative_refused():
    engine = FakeEngine(0, 0)
    engine.warmup()
    for _ in range(50):
        engine.decode_batch(_batch(1))
    with pytest.raises(ValueError):
        FakeEngine(0, 0, fail_every=-1)
