"""Smoke runs of the benchmark scripts, so CI keeps them working (not performance tests).

- bench/gpu_capacity.py in its CPU mode: tiny random-weight Fun-ASR-Nano, 1 and 2 real-time
  streams for 9 s through the real worker; it must finish, produce partials and finals and
  no errors (the latency targets are GPU targets and are not asserted here).
- bench/worker_batching.py with the fake engine at 1 and 2 streams, batching on and off.
- bench/vad_cost.py: every VAD backend at batch sizes 1 and 3 and 3 paced streams through the
  VadBatcher, a fraction of a second each.
- bench/decoder_work.py: token counts on one segment, and `--prepare` (input preparation with
  and without the engine's caches) over a 3 s partial schedule.
- bench/front_capacity.py in its sustained mode: 3 streams, each live 12 s session after session.
"""

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


def _python() -> str:
    return str(PY) if PY.exists() else sys.executable


def _bench(args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one benchmark script (`args` after the interpreter) from the repo root; it must exit 0."""
    r = subprocess.run([_python(), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.timeout(300)  # builds a tiny model, starts the worker's process tree, runs 2-3 steps
def test_gpu_capacity_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    r = _bench(
        [
            "bench/gpu_capacity.py",
            "--tiny",
            "--cpu",
            "--streams",
            "1,2",
            "--search",
            "--duration-s",
            "9",
            "--files",
            "synth/three_utterances.wav",
            "--model-dir",
            str(tmp_path / "tiny-model"),
            "--json",
            str(out),
        ],
        timeout=300,
    )
    data = json.loads(out.read_text())
    assert [row["streams"] for row in data["rows"]][:1] == [1]
    for row in data["rows"]:
        assert row["errors"] == 0, row["error_samples"]
        assert row["partials"] > 0 and row["finals"] >= row["streams"]
        assert row["final_after_vad_end_ms"]["n"] >= 1
    assert "| streams |" in r.stdout


def test_worker_batching_fake_smoke(tmp_path: Path) -> None:
    out = tmp_path / "batching.json"
    _bench(
        [
            "bench/worker_batching.py",
            "--engines",
            "fake",
            "--streams",
            "1,2",
            "--quick",
            "--ramp-s",
            "0.5",
            "--json",
            str(out),
        ],
        timeout=180,
    )
    rows = json.loads(out.read_text())["rows"]
    assert {(x["batching"], x["streams"]) for x in rows} == {("on", 1), ("on", 2), ("off", 1), ("off", 2)}
    assert all(x["errors"] == 0 and x["finals"] >= x["streams"] for x in rows)


def test_vad_cost_smoke(tmp_path: Path) -> None:
    """bench/vad_cost.py measures every VAD backend (fsmn: released shapes, random weights)."""
    out = tmp_path / "vad.json"
    r = _bench(
        ["bench/vad_cost.py", "--batch-sizes", "1,3", "--stream-seconds", "0.3",
         "--repeats", "1", "--files", "zh/damo.wav", "--paced", "3", "--paced-seconds", "0.5",
         "--out", str(out)],
        timeout=180,
    )
    data = json.loads(out.read_text())
    results = data["results"]
    assert set(results) == {"silero", "silero-torch", "silero-onnx", "fsmn"}
    assert all(p["3"]["mean_batch"] >= 1 for p in data["paced"].values())
    for cells in results.values():
        assert set(cells) == {"1", "3"}
        assert all(c["us_cpu_per_stream_s"] > 0 and c["windows"] > 0 for c in cells.values())
    assert "| silero-onnx |" in r.stdout


def test_decoder_work_smoke(tmp_path: Path) -> None:
    """bench/decoder_work.py counts real engine work: forced prefixes and drafts cut generated tokens."""
    out = tmp_path / "decoder.json"
    r = _bench(
        ["bench/decoder_work.py", "--segments", "1", "--modes", "before,lcp2", "--draft", "both",
         "--latency",
         "--latency-requests", "8", "--arrival-ms", "5", "--repeats", "1",
         "--model-dir", str(tmp_path / "tiny-model"), "--json", str(out)],
        timeout=240,
    )
    data = json.loads(out.read_text())
    before, before_drafted, after, after_drafted = data["rows"]
    assert [(x["mode"], x["draft"]) for x in data["rows"]] == [
        ("before", "off"), ("before", "on"), ("lcp2", "off"), ("lcp2", "on")]
    # Token counts are exact (scripted answers), so this holds on any machine.
    assert after["generated_partial_per_s"] < before["generated_partial_per_s"]
    assert after["generated_final_per_s"] == before["generated_final_per_s"]
    for off, on in ((before, before_drafted), (after, after_drafted)):
        # The modelled hypotheses only grow, so the engine accepts every draft token...
        assert on["draft_acceptance"] == 1.0 and off["draft_proposed_per_s"] == 0
        # ...and a final generates only what its segment's last partial had not.
        assert on["generated_final_per_s"] < off["generated_final_per_s"]
        assert on["generated_ratio"] < off["generated_ratio"]
    assert [x["mode"] for x in data["latency"]] == ["whole-batch", "iteration"]
    assert "| lcp2 |" in r.stdout


def test_decoder_prepare_bench_measures_both_paths_over_the_partial_schedule(tmp_path: Path) -> None:
    out = tmp_path / "prepare.json"
    r = _bench(
        ["bench/decoder_work.py", "--prepare", "--prepare-seconds", "3", "--prepare-repeats", "1",
         "--model-dir", str(tmp_path / "tiny-model"), "--json", str(out)],
        timeout=240,
    )
    (row,) = json.loads(out.read_text())["prepare"]
    # 3 s in 600 ms steps: partials at 0.6, 1.2, 1.8 and 2.4 s, then the final.
    assert row["before"]["requests"] == row["after"]["requests"] == 5
    assert row["before"]["ms_per_request"] > 0 and row["after"]["ms_per_request"] > 0
    assert "| 3 s | 5 |" in r.stdout


@pytest.mark.timeout(180)  # starts the worker's process tree (fake engine) and the node load client
def test_front_capacity_sustained_streams_stay_live_session_after_session(tmp_path: Path) -> None:
    out = tmp_path / "front"
    _bench(
        [
            "bench/front_capacity.py",
            "--streams",
            "3",
            "--sustain-s",
            "12",
            "--session-files",
            "1",
            "--ramp-ms",
            "300",
            "--out",
            str(out),
        ],
        timeout=180,
    )
    [row] = json.loads((out / "front_capacity.json").read_text())
    assert row["mode"] == "sustained12s"
    assert row["sessions_with_errors"] == 0, row["errors"]
    # Every slot plays one recording (5-23 s) per session, back to back for 12 s: more sessions
    # than streams, and all three streams live nearly all the time (the old mode fell off).
    assert row["sessions"] > 3
    assert row["live_streams_peak"] == 3
    assert row["live_streams_mean"] > 2.7
    assert 30 < row["audio_s"] < 40
    assert row["cpu_ms_per_stream_s"] > 0
