"""deploy/k8s: strict validation against the Kubernetes OpenAPI schemas (kubernetes-validate,
schemas shipped in the package, no cluster), then the properties operations rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_testkit import REPO, run, tool

K8S = REPO / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def docs() -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    run([tool("kubernetes-validate"), "--strict", "--quiet", str(path)])


def test_validator_rejects_an_unknown_field(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "gateway.yaml").read_text().replace("periodSeconds: 5", "periodSecondz: 5", 1))
    proc = run([tool("kubernetes-validate"), "--strict", "--quiet", str(bad)], check=False)
    assert proc.returncode != 0 and "periodSecondz" in proc.stdout + proc.stderr


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


def test_workers_get_a_gpu_grpc_probes_and_a_headless_service() -> None:
    d = docs()
    svc = d[("Service", "asr-worker")]
    assert svc["spec"]["clusterIP"] == "None"
    sts = d[("StatefulSet", "asr-worker")]
    assert sts["spec"]["serviceName"] == "asr-worker"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 50051, probe
    drain = float(re.search(r"--drain-grace-s (\d+)", _env(c)["ASR_WORKER_ARGS"]).group(1))
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert any(v["mountPath"] == "/models" for v in c["volumeMounts"])
    assert ("PodDisruptionBudget", "asr-worker") in d


def test_gateway_finds_every_worker_pod_through_the_headless_service() -> None:
    d = docs()
    svc = d[("Service", "asr-worker")]["spec"]
    assert svc["clusterIP"] == "None"
    assert d[("StatefulSet", "asr-worker")]["spec"]["serviceName"] == "asr-worker"
    data = d[("ConfigMap", "asr-gateway")]["data"]
    # One name for all pods: scaling the StatefulSet needs no gateway change.
    assert data["WORKER_ADDRESSES"] == f"asr-worker.asr.svc.cluster.local:{svc['ports'][0]['port']}"
    assert 0 < int(data["WORKER_DNS_REFRESH_SECONDS"]) <= 60


def test_gateway_readiness_drain_hpa_and_pdb() -> None:
    d = docs()
    dep = d[("Deployment", "asr-gateway")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grace = int(d[("ConfigMap", "asr-gateway")]["data"]["SHUTDOWN_GRACE_SECONDS"])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
    assert pod["securityContext"]["runAsNonRoot"] is True
    hpa = d[("HorizontalPodAutoscaler", "asr-gateway")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "asr-gateway"
    assert hpa["spec"]["minReplicas"] >= 2
    assert d[("PodDisruptionBudget", "asr-gateway")]["spec"]["minAvailable"] >= 1
    # No secret values in the manifests: AUTH_TOKEN comes from an (optional) Secret.
    assert _env(c).get("AUTH_TOKEN") is None


def test_ingress_timeouts_exceed_the_idle_limit() -> None:
    d = docs()
    idle = int(d[("ConfigMap", "asr-gateway")]["data"]["IDLE_TIMEOUT_SECONDS"])
    ann = d[("Ingress", "asr-gateway")]["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > idle
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > idle


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
