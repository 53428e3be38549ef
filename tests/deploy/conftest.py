"""Fixtures for the deployment tests (helpers they import by name live in deploy_testkit.py).

These tests prove what the images and manifests do without a Docker engine or a cluster:
the files are validated by the real upstream tools (Docker Compose's own parser, the
Kubernetes OpenAPI schemas, hadolint, shellcheck, haproxy -c), and the scripts the images
run are executed here for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_testkit import REPO


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO
