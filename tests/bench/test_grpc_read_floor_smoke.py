"""bench/grpc_read_floor.py runs and counts every message it was sent (not a performance test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def _load():
    # Imported by name (not from a file spec): its server runs in a spawned process, which
    # imports the module again from sys.path.
    sys.path.insert(0, str(ROOT / "bench"))
    import grpc_read_floor

    return grpc_read_floor


def test_read_floor_counts_config_and_every_paced_frame():
    bench = _load()
    r = bench.run(streams=3, seconds=1.2)
    # One config + 20 frames of 60 ms per stream.
    assert r["messages"] == 3 * 21
    assert r["server_cpu_s"] > 0 and r["ms_per_stream_second"] > 0


def test_read_floor_reads_through_the_context_and_paces_larger_frames():
    bench = _load()
    r = bench.run(streams=2, seconds=1.2, read="context", frame_ms=120)
    # One config + 10 frames of 120 ms per stream, read with context.read().
    assert r["messages"] == 2 * 11
    assert r["read"] == "context" and r["frame_ms"] == 120
