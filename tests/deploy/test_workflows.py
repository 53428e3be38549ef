""".github/workflows: checked by actionlint (with shellcheck on every `run:` script), and the
image workflow checked for what a release needs: both images built, pushed to ghcr.io with
GITHUB_TOKEN only on version tags, under the names docker-compose.yml pulls.

actionlint knows GitHub's workflow schema, expression types and the inputs of popular
actions per major version, so an unknown input, a typo in an expression or a deprecated
action runtime fails here, not after a tag is pushed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from deploy_testkit import REPO, run, tool
from test_compose import compose_bin

WORKFLOWS = REPO / ".github" / "workflows"


def actionlint(*files: Path) -> list[dict]:
    """actionlint's findings (JSON) for `files`; empty when they are clean."""
    proc = run([tool("actionlint"), "-shellcheck", tool("shellcheck"), "-format", "{{json .}}",
                *map(str, files)], check=False)
    assert proc.returncode in (0, 1), f"actionlint failed to run ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout or "[]")


def load(name: str) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_every_workflow_passes_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {f.name for f in files} >= {"ci.yml", "images.yml"}
    findings = actionlint(*files)
    assert not findings, "\n".join(f"{f['filepath']}:{f['line']}: {f['message']}" for f in findings)


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    # The check is real: an undefined action input, an unknown context and a shell error fail it.
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v5\n        with:\n          fetch-dept: 0\n"
        "      - run: echo ${{ github.refname }}\n"
        "      - run: if [ -n $X ]; then echo; fi\n"
    )
    messages = " ".join(f["message"] for f in actionlint(bad))
    assert "fetch-dept" in messages and "refname" in messages and "SC2070" in messages, messages


def test_image_workflow_builds_both_images_and_pushes_only_on_version_tags() -> None:
    wf = load("images.yml")
    assert wf["on"]["push"] == {"tags": ["v*.*.*"]}, "publish only on version tags"
    assert wf.get("permissions") == {"contents": "read"}, "least privilege by default"
    job = wf["jobs"]["image"]
    assert job["permissions"]["packages"] == "write"
    assert sorted(job["strategy"]["matrix"]["component"]) == ["gateway", "worker"]
    steps = {s.get("uses", "").split("@")[0]: s for s in job["steps"]}
    build = steps["docker/build-push-action"]["with"]
    assert build["file"] == "Dockerfile.${{ matrix.component }}" and build["context"] == "."
    for component in ("gateway", "worker"):
        assert (REPO / f"Dockerfile.{component}").is_file()
    # Push (and registry login) only for a pushed tag v*, never for pull requests.
    push_when = "github.event_name == 'push' && startsWith(github.ref, 'refs/tags/v')"
    assert build["push"] == "${{ " + push_when + " }}"
    login = steps["docker/login-action"]
    assert login["if"] == push_when
    assert login["with"] == {"registry": "ghcr.io", "username": "${{ github.actor }}",
                             "password": "${{ secrets.GITHUB_TOKEN }}"}
    meta = steps["docker/metadata-action"]["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository_owner }}/funasr-nano-${{ matrix.component }}"
    assert "type=semver,pattern={{version}}" in meta["tags"]


def test_compose_pulls_the_published_images_by_prefix_and_tag() -> None:
    # What the workflow publishes for tag v1.2.3 of github.com/acme/...: the metadata action's
    # {{version}} drops the "v".
    meta = load("images.yml")["jobs"]["image"]["steps"]
    images = next(s for s in meta if s.get("uses", "").startswith("docker/metadata-action"))["with"]["images"]
    published = {c: images.replace("${{ github.repository_owner }}", "acme")
                 .replace("${{ matrix.component }}", c) + ":1.2.3" for c in ("gateway", "worker")}
    env = {"ASR_IMAGE_PREFIX": "ghcr.io/acme/funasr-nano", "ASR_IMAGE_TAG": "1.2.3",
           "ASR_PULL_POLICY": "always"}
    proc = run([compose_bin(), "-f", "docker-compose.yml", "--profile", "multi-gpu", "config",
                "--format", "json"], env=env)
    services = json.loads(proc.stdout)["services"]
    assert services["gateway"]["image"] == published["gateway"]
    assert services["worker"]["image"] == services["worker-gpu1"]["image"] == published["worker"]
    assert {services[s]["pull_policy"] for s in ("gateway", "worker", "worker-gpu1")} == {"always"}
    # Without the variables the file still builds locally (pull only when missing, then build).
    local = json.loads(run([compose_bin(), "-f", "docker-compose.yml", "config", "--format", "json"]).stdout)
    gateway = local["services"]["gateway"]
    assert gateway["image"] == "funasr-nano-gateway:latest"
    assert gateway["pull_policy"] == "missing" and "build" in gateway


def test_ci_workflow_runs_the_projects_ci_entry_point() -> None:
    wf = load("ci.yml")
    runs = [s.get("run", "") for s in wf["jobs"]["test"]["steps"]]
    assert any(re.fullmatch(r"bash \.ci/run", r.strip()) for r in runs), runs
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
