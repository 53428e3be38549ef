"""Shared pytest setup for worker tests: import path, shared audio, torch threads."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "worker-py"))

#: Real speech shipped beside the repository (see shared/audio/MANIFEST.json).
SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO_ROOT.parent / "shared" / "audio"))


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """Directory of the shared test audio; skips when it is not beside the checkout."""
    if not (SHARED_AUDIO / "MANIFEST.json").exists():
        pytest.skip(f"shared audio not found at {SHARED_AUDIO}")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def audio_manifest(shared_audio: Path) -> dict:
    """The parsed MANIFEST.json of the shared audio."""
    return json.loads((shared_audio / "MANIFEST.json").read_text(encoding="utf-8"))
