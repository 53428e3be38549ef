"""bench/mux_front_cost.py runs both transports against the real worker (not a performance test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = REPO / "worker-py" / ".venv" / "bin" / "python"
SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO.parent / "shared" / "audio"))

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not (SHARED_AUDIO / "MANIFEST.json").exists(),
                       reason=f"shared audio not found at {SHARED_AUDIO}"),
]


def test_mux_and_per_call_runs_send_the_same_frames_in_fewer_mux_messages(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    python = str(PY) if PY.exists() else sys.executable
    r = subprocess.run(
        [python, "bench/mux_front_cost.py", "--streams", "8", "--seconds", "1.2", "--flush-ms", "20",
         "--front-processes", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls, mux = json.loads(out.read_text())
    assert (calls["mode"], mux["mode"]) == ("calls", "mux")
    assert calls["frames"] == mux["frames"] == 8 * 20
    # Per call: a config, the frames and an end of input per stream; mux: one message per flush.
    assert calls["messages_sent"] == 8 * 20 + 2 * 8
    assert mux["messages_sent"] < calls["messages_sent"] / 2
    assert calls["worker_cpu_s"] > 0 and mux["worker_cpu_s"] > 0
