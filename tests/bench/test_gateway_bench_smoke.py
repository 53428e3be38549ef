"""Smoke runs of the TypeScript gateway benchmarks, so CI keeps them working (not performance tests).

The gateway's published CPU-per-frame and added-latency figures (docs/benchmarks.md, issue 11) come
from these scripts; typecheck alone let them rot between sessions. Each runs a few streams for a few
seconds against the stub worker and must finish with every session clean and every number present.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO.parent / "shared" / "audio"))

pytestmark = pytest.mark.skipif(
    not (SHARED_AUDIO / "MANIFEST.json").exists(), reason=f"shared audio not found at {SHARED_AUDIO}"
)


def _node_bench(script: str, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run bench/<script> with tsx from the repo root; it must exit 0."""
    r = subprocess.run(["node", "--import", "tsx", f"bench/{script}", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.timeout(240)
def test_gateway_overhead_compares_direct_and_gateway_paths_with_clean_sessions(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    r = _node_bench("gateway-overhead.ts",
                    ["--worker", "stub", "--ns", "4", "--files", "zh/damo.wav", "--out", str(out)],
                    timeout=240)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["n"] == 4
    for path in ("direct", "gateway"):
        s = row[path]["summary"]
        assert s["sessions"] == 4 and s["sessionsWithErrors"] == 0 and s["segmentMismatches"] == 0
        assert s["finals"] >= 4 and s["partials"] > 0
    added = row["added"]
    # The stub worker's per-frame trace joined both paths (send -> worker receipt).
    assert added["uplinkP99"] is not None
    assert added["gatewayCpuUsPerFrame"] > 0 and added["gatewayCores"] > 0
    assert "| 4 |" in r.stdout


@pytest.mark.timeout(240)
def test_gateway_floor_measures_every_layer(tmp_path: Path) -> None:
    r = _node_bench("gateway-floor.ts",
                    ["--streams", "4", "--seconds", "2", "--rounds", "1", "--pin", ""],
                    timeout=240)
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "µs per frame" not in line]
    modes = {line.split("|")[1].strip() for line in rows if not line.startswith("|---")}
    assert {"ws", "ws-grpc", "ws-h2", "ws-grpc-direct", "gateway"} <= modes


@pytest.mark.timeout(240)
def test_gateway_floor_receive_variants_deliver_every_frame_side_by_side() -> None:
    # --pairs runs two fronts at once; each front checks on exit that ws delivered every frame its
    # clients sent (a variant that lost frames would look cheap), so exit 0 means all arrived.
    r = _node_bench("gateway-floor.ts",
                    ["--streams", "4", "--seconds", "2", "--rounds", "1", "--pin", "",
                     "--pairs", "ws-direct+ws-onread,ws-onread-copy+ws-paused"],
                    timeout=240)
    assert "| ws-direct + ws-onread |" in r.stdout and "| ws-onread-copy + ws-paused |" in r.stdout
    assert r.stderr.count("frames received") == 4


def test_call_reader_cost_runs_both_receive_paths() -> None:
    r = _node_bench("call-reader-cost.ts", ["--calls", "5", "--messages", "200", "--rounds", "1"],
                    timeout=120)
    # Each path labels itself with the path its calls really took (a fallback would print grpc-js twice).
    out = r.stdout + r.stderr  # the script reports on stderr
    assert "(grpc-js):" in out and "(direct):" in out


def test_frame_path_cost_measures_the_checkouts_audio_path() -> None:
    r = _node_bench("frame-path-cost.ts", ["--sessions", "10", "--frames", "20000", "--rounds", "1"],
                    timeout=120)
    (line,) = [x for x in r.stdout.splitlines() if "ns per frame" in x]
    assert float(line.rsplit("median ", 1)[1]) > 0
