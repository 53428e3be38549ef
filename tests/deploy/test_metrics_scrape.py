"""Prometheus scrape settings: compose labels and k8s pod annotations name the ports the
processes really serve /metrics on (the gateway's WebSocket port; the worker's
--metrics-port), and those ports are exposed."""

from __future__ import annotations

import re
import shlex

import yaml
from deploy_testkit import REPO
from test_compose import compose_config

K8S = REPO / "deploy" / "k8s"


def _metrics_port_flag(args: str) -> str:
    words = shlex.split(args)
    assert "--metrics-port" in words, f"worker args lack --metrics-port: {args}"
    return words[words.index("--metrics-port") + 1]


def test_compose_labels_point_at_the_metrics_ports() -> None:
    services = compose_config()["services"]
    worker, gateway = services["worker"], services["gateway"]
    port = _metrics_port_flag(worker["environment"]["ASR_WORKER_ARGS"])
    assert worker["labels"] == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                                "prometheus.io/path": "/metrics"}
    assert port in worker["expose"]
    assert gateway["labels"]["prometheus.io/port"] == gateway["environment"]["GATEWAY_PORT"]
    assert gateway["labels"]["prometheus.io/scrape"] == "true"
    assert gateway["labels"]["prometheus.io/path"] == "/metrics"


def _pod(doc_file: str, kind: str) -> dict:
    docs = [d for d in yaml.safe_load_all((K8S / doc_file).read_text()) if d and d["kind"] == kind]
    return docs[0]["spec"]["template"]


def test_k8s_pod_annotations_point_at_the_metrics_ports() -> None:
    worker = _pod("worker.yaml", "StatefulSet")
    container = worker["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = _metrics_port_flag(env["ASR_WORKER_ARGS"])
    ann = worker["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                   "prometheus.io/path": "/metrics"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == int(port)

    gateway = _pod("gateway.yaml", "Deployment")
    ports = {p["name"]: p["containerPort"] for p in gateway["spec"]["containers"][0]["ports"]}
    ann = gateway["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == ports["ws"]


def test_operations_doc_lists_every_metric() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    # Every quoted metric name: `name: "..."` options and the lazily collected counters alike.
    gateway = set(re.findall(r'"(asr_gateway_\w+)"', (REPO / "gateway/src/metrics.ts").read_text()))
    worker_src = (REPO / "worker-py/asr_worker/metrics.py").read_text()
    worker = set(re.findall(r'"(asr_worker_\w+)"', worker_src))
    assert len(gateway) >= 10 and len(worker) >= 10
    # Counters are exposed with _total, as the doc lists them.
    counters = set(re.findall(r'Counter\(\s*"(asr_worker_\w+)"', worker_src))
    missing = sorted(n for n in gateway | {w + "_total" if w in counters else w for w in worker}
                     if f"`{n}`" not in doc)
    assert not missing, f"docs/operations.md lacks metrics: {missing}"
