"""`python -m asr_worker check` on CUDA: the self-test the README's GPU section runs first.

Skips cleanly without a GPU. With ASR_REAL_MODEL_DIR set, tests/worker/test_cli.py also
checks real weights (on CUDA when present).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

WORKER = Path(__file__).resolve().parents[3] / "worker-py"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr_worker", "check", *args],
        cwd=WORKER, capture_output=True, text=True, timeout=280,
        env={**os.environ, "PYTHONPATH": str(WORKER)},
    )


@pytest.mark.timeout(300)
def test_check_on_cuda_reports_the_gpu_its_dtype_and_cuda_peak_memory(tiny_model_dir: Path):
    proc = _check("--model-dir", str(tiny_model_dir), "--device", "auto")
    assert proc.returncode == 0, proc.stderr
    rep = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    bf16 = torch.cuda.get_device_capability(0)[0] >= 8
    assert (rep["device"], rep["dtype"]) == ("cuda:0", "bf16" if bf16 else "fp32")
    mib, kind = rep["peak_memory_mib"].split(" ", 1)
    assert int(mib) >= 1 and "cuda" in kind
    assert float(rep["rtf"]) > 0 and rep["check"] == "ok"
