"""The compose load balancer's haproxy config, run for real in front of a live gateway.

Docker's DNS is not here, so the one `server-template` line (replica discovery) is swapped
for a fixed server; everything else — http mode, /readyz checks, leastconn, the tunnel
timeouts — is the shipped file. A FunASR session through it proves WebSocket upgrades,
binary frames and finals pass the balancer, and that it takes a gateway without a ready
worker out of rotation.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import wave
from pathlib import Path

import pytest
from deploy_testkit import REPO, free_port, run, wait_for
from test_live_scripts import GATEWAY_MAIN, Proc, gateway_ready

pytestmark = [
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/run installs it)"),
    pytest.mark.timeout(300),
]

SHARED = Path(os.environ.get("ASR_SHARED_AUDIO", REPO.parent / "shared" / "audio"))


def local_config(gateway_port: int, lb_port: int) -> str:
    text = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    text, n = re.subn(r"^\s*server-template .*$",
                      f"    server gw1 127.0.0.1:{gateway_port} check inter 500ms fall 2 rise 1",
                      text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"^\s*bind :10095\s*$", f"    bind 127.0.0.1:{lb_port}", text, flags=re.M)
    assert n == 1
    return text


def audio_file(tmp_path: Path) -> Path:
    wav = SHARED / "synth" / "three_utterances.wav"
    if wav.exists():
        return wav
    out = tmp_path / "silence.wav"  # no shared audio: an empty session still ends with a final
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(struct.pack("<h", 0) * 16000 * 2)
    return out


def test_funasr_session_through_haproxy(tmp_path) -> None:
    if not GATEWAY_MAIN.exists():
        pytest.skip("gateway/src/main.ts not present yet")
    wport, gport, lport = free_port(), free_port(), free_port()
    worker = Proc(["bash", "scripts/start-worker.sh"],
                  {"ASR_ENGINE": "fake", "ASR_DEVICE": "cpu", "ASR_WORKER_LISTEN": f"127.0.0.1:{wport}"},
                  tmp_path / "worker.log")
    gateway = Proc(["bash", "scripts/start-gateway.sh"],
                   {"GATEWAY_PORT": str(gport), "WORKER_ADDRESSES": f"127.0.0.1:{wport}"},
                   tmp_path / "gateway.log")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(local_config(gport, lport))
    lb = Proc(["haproxy", "-db", "-f", str(cfg)], {}, tmp_path / "haproxy.log")
    try:
        wait_for(lambda: gateway_ready(gport) or not gateway.alive(), 120, "gateway ready")
        assert gateway.alive(), gateway.text()
        # Through the balancer once its health check has marked the gateway up.
        wait_for(lambda: gateway_ready(lport) or not lb.alive(), 30, "lb forwarding /readyz")
        assert lb.alive(), lb.text()
        proc = run(["npm", "run", "--silent", "client", "--", "--port", str(lport), "--no-pace",
                    "--mode", "2pass", "--timeout", "60", str(audio_file(tmp_path))], timeout=180)
        assert re.search(r"1/1 sessions ok", proc.stdout + proc.stderr), proc.stdout + proc.stderr
        # Worker gone -> gateway not ready -> the balancer stops routing (503 from haproxy).
        worker.terminate(timeout=60)
        wait_for(lambda: not gateway_ready(lport), 30, "lb to take the unready gateway out")
    finally:
        for p in (lb, gateway, worker):
            if p.alive():
                p.terminate(timeout=60)
