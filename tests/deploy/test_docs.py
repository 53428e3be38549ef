"""The README documents every option that exists, and only those: gateway environment
variables (from gateway/src/config.ts), worker `serve` flags (from the CLI's own parser)
and the variables the scripts read."""

from __future__ import annotations

import re

from deploy_testkit import REPO

README = (REPO / "README.md").read_text()


def test_every_gateway_variable_is_documented() -> None:
    src = (REPO / "gateway/src/config.ts").read_text()
    schema = src[src.index("const envSchema"):src.index("export interface GatewayConfig")]
    names = set(re.findall(r"^\s{4}([A-Z][A-Z0-9_]+):", schema, re.M))
    assert len(names) > 10
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"README lacks gateway variables: {missing}"


def test_every_worker_flag_is_documented() -> None:
    from asr_worker.cli import build_parser

    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["serve"]
    flags = {s for a in serve._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    # Engine-internal knobs of the fake engine are documented in docs/worker.md only.
    flags -= {"--fake-base-ms", "--fake-per-item-ms", "--fake-fail-every"}
    missing = sorted(f for f in flags if f"`{f}" not in README)
    assert not missing, f"README lacks worker flags: {missing}"


def test_every_script_variable_is_documented() -> None:
    names: set[str] = set()
    for script in ("run.sh", "start-worker.sh", "start-gateway.sh", "fetch-model.sh", "setup.sh"):
        text = (REPO / "scripts" / script).read_text()
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):-", text))
    names -= {"PYTHONPATH", "CI"}
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"README lacks script variables: {missing}"
