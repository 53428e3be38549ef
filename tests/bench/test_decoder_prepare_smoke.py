"""Smoke run of bench/decoder_work.py --prepare, so CI keeps it working (not a performance test)."""

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

pytestmark = pytest.mark.skipif(
    not (SHARED_AUDIO / "MANIFEST.json").exists(), reason=f"shared audio not found at {SHARED_AUDIO}"
)


def test_decoder_prepare_bench_measures_both_paths_over_the_partial_schedule(tmp_path: Path) -> None:
    out = tmp_path / "prepare.json"
    python = str(PY) if PY.exists() else sys.executable
    r = subprocess.run(
        [python, "bench/decoder_work.py", "--prepare", "--prepare-seconds", "3", "--prepare-repeats", "1",
         "--model-dir", str(tmp_path / "tiny-model"), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (row,) = json.loads(out.read_text())["prepare"]
    # 3 s in 600 ms steps: partials at 0.6, 1.2, 1.8 and 2.4 s, then the final.
    assert row["before"]["requests"] == row["after"]["requests"] == 5
    assert row["before"]["ms_per_request"] > 0 and row["after"]["ms_per_request"] > 0
    assert "| 3 s | 5 |" in r.stdout
