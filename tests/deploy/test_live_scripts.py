"""The start and health scripts the images run, executed for real on this machine.

Dockerfile.worker's ENTRYPOINT is scripts/start-worker.sh and its HEALTHCHECK
scripts/healthcheck-worker.sh; Dockerfile.gateway runs scripts/start-gateway.sh from
the compiled dist/ with GATEWAY_FROM_DIST=1 and checks scripts/healthcheck-gateway.sh.
scripts/run.sh (the README's main command) composes them. These tests start each one,
wait for health, send SIGTERM and check a clean exit: what CI proves here is what the
containers do, short of the CUDA base image itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from deploy_testkit import REPO, free_port, run, wait_for

GATEWAY_MAIN = REPO / "gateway" / "src" / "main.ts"


class Proc:
    """A script started in its own process group, logged to a file, always cleaned up."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.p = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=self._fh,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def terminate(self, timeout: float) -> int:
        """SIGTERM the script itself (as docker stop / Ctrl-C would) and wait."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=timeout)
        finally:
            self.kill_group()

    def kill_group(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(timeout=10)
        self._fh.close()


def worker_healthy(addr: str) -> bool:
    return run(["bash", "scripts/healthcheck-worker.sh", addr], check=False, timeout=30).returncode == 0


def gateway_ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/readyz"
    return run(["bash", "scripts/healthcheck-gateway.sh", url], check=False, timeout=30).returncode == 0


@pytest.fixture
def fake_worker(tmp_path):
    port = free_port()
    w = Proc(["bash", "scripts/start-worker.sh"],
             {"ASR_ENGINE": "fake", "ASR_DEVICE": "cpu", "ASR_WORKER_LISTEN": f"127.0.0.1:{port}"},
             tmp_path / "worker.log")
    yield w, f"127.0.0.1:{port}"
    if w.alive():
        w.terminate(timeout=60)


@pytest.mark.timeout(180)
def test_start_worker_serves_health_and_drains_on_sigterm(fake_worker) -> None:
    w, addr = fake_worker
    wait_for(lambda: f"LISTENING {addr}" in w.text() or not w.alive(), 90, "LISTENING")
    assert w.alive(), w.text()
    wait_for(lambda: worker_healthy(addr), 60, "worker SERVING")
    assert w.terminate(timeout=60) == 0, w.text()
    assert not worker_healthy(addr)


@pytest.mark.timeout(500)
def test_gateway_from_dist_as_in_the_image(fake_worker, tmp_path) -> None:
    """Dockerfile.gateway's two stages, replayed in a directory: dist/ from `npm run build`,
    then a runtime tree with production dependencies only (setup.sh --node-only --no-dev)."""
    if not GATEWAY_MAIN.exists():
        pytest.skip("gateway/src/main.ts not present yet")
    _worker, addr = fake_worker
    # Stage 1 (build): tsc to dist/ (tsconfig.build.json).
    run(["npm", "run", "--silent", "build"], timeout=300)
    assert (REPO / "dist/gateway/src/main.js").exists()
    # Stage 2 (runtime): package files, scripts/, dist/; npm ci --omit=dev through setup.sh.
    app = tmp_path / "app"
    app.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(REPO / name, app / name)
    shutil.copytree(REPO / "scripts", app / "scripts")
    shutil.copytree(REPO / "dist", app / "dist")
    run(["bash", str(app / "scripts/setup.sh"), "--node-only", "--no-dev"], timeout=300)
    assert not (app / "node_modules/typescript").exists(), "dev dependencies in the runtime tree"
    port = free_port()
    g = Proc(["bash", str(app / "scripts/start-gateway.sh")],
             {"GATEWAY_FROM_DIST": "1", "GATEWAY_PORT": str(port), "WORKER_ADDRESSES": addr,
              "NODE_ENV": "production"},
             tmp_path / "gateway.log", cwd=app)
    try:
        wait_for(lambda: gateway_ready(port) or not g.alive(), 90, "gateway /readyz 200")
        assert g.alive(), g.text()
        assert g.terminate(timeout=60) == 0, g.text()
    finally:
        if g.alive():
            g.kill_group()


@pytest.mark.timeout(900)
def test_run_sh_starts_worker_and_gateway_and_stops_both(tmp_path) -> None:
    """The README's main command, as written, with the offline tiny model."""
    if not GATEWAY_MAIN.exists():
        pytest.skip("gateway/src/main.ts not present yet")
    gport, wport = free_port(), free_port()
    r = Proc(["bash", "scripts/run.sh"],
             {"GATEWAY_PORT": str(gport), "WORKER_PORT": str(wport), "RUN_LOG_DIR": str(tmp_path),
              "ASR_DEVICE": "cpu", "MODEL_DIR": "", "ASR_DOWNLOAD_MODEL": "0",
              "MODEL_CACHE_DIR": os.environ.get("ASR_TEST_MODEL_CACHE", str(REPO / "models"))},
             tmp_path / "run.log")
    try:
        wait_for(lambda: gateway_ready(gport) or not r.alive(), 780, "run.sh: gateway /readyz 200",
                 interval=2)
        assert r.alive(), r.text()
        assert "TINY RANDOM-WEIGHT" in r.text()
        assert worker_healthy(f"127.0.0.1:{wport}")
        rc = r.terminate(timeout=90)
        assert rc in (0, 143), r.text()
        assert not gateway_ready(gport) and not worker_healthy(f"127.0.0.1:{wport}")
    finally:
        if r.alive():
            r.kill_group()
