"""Smoke run of bench/h2-write-cost.ts, so CI keeps it working (not a performance test).

The write coalescer's per-flush cost and the Writable-bypass figures in docs/benchmarks.md come from
it, and its handle-write mode reaches into Node's internals (a Node upgrade could break it silently).
Every mode must run, and the script itself fails a run whose sink did not receive every byte written.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_h2_write_cost_runs_every_write_mode_and_delivers_every_byte() -> None:
    r = subprocess.run(
        ["node", "--import", "tsx", "bench/h2-write-cost.ts", "--streams", "10", "--seconds", "1",
         "--warmup-s", "0.5", "--rounds", "1", "--pin", ""],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    rows = [line.split("|") for line in lines if line.startswith("| ") and "hold (ms)" not in line]
    measured = {row[1].strip(): float(row[4]) for row in rows}
    assert set(measured) == {"none", "stream-write", "handle-write", "one-stream"}
    assert all(us > 0 for us in measured.values())
