#!/usr/bin/env python3
"""`python -m asr_worker serve` with decode lengths forced (benchmarks only).

Random weights decode until EOS or the token cap, which says nothing about real
speech. For capacity runs this wrapper makes the worker's own composition root
(asr_worker.cli.serve) load the funasr-nano engine with
`forced_tokens_per_second` (every request generates exactly
ceil(seconds x rate) tokens, EOS suppressed), as real Mandarin speech yields
about 4-6 text tokens per second. Everything else is the production worker.

    python bench/capacity_worker.py --tokens-per-second 5 -- serve --engine funasr-nano ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker-py"))

from asr_worker import cli

#: Carries --tokens-per-second into the engine process (spawned children get the environment).
ENV = "ASR_BENCH_FORCED_TOKENS_PER_SECOND"


def load_engine(args):
    """cli.load_engine with forced decode lengths; module-level so the engine process can
    unpickle it by reference (the worker spawns its engine process)."""
    if args.engine != "funasr-nano":
        return original_load_engine(args)
    from asr_worker.models.loader import load_engine as load_funasr_nano

    return load_funasr_nano(
        args.model_dir,
        args.device,
        dtype=args.dtype,
        forced_tokens_per_second=float(os.environ[ENV]),
    )


original_load_engine = cli.load_engine


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens-per-second", type=float, required=True)
    own, rest = p.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    os.environ[ENV] = str(own.tokens_per_second)
    cli.load_engine = load_engine
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
