"""funasr-nano on CUDA: bf16 batched and iteration-level decode. Skips cleanly without a GPU.

The real-shapes test builds a random-weight Fun-ASR-Nano with the real dimensions (~2 GB,
a minute or two) and runs only when ASR_TEST_REAL_SHAPES=1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_worker.engine.base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * MODEL_SAMPLE_RATE))).astype(np.float32)


def _requests(n: int) -> list[DecodeRequest]:
    opts = [
        DecodeOptions(),
        DecodeOptions(hotwords=("阿里巴巴", "达摩院"), language="zh"),
        DecodeOptions(language="en", itn=False),
    ]
    return [
        DecodeRequest(_audio(1.0 + (i % 5) * 0.7, i), opts[i % 3], "partial" if i % 4 == 3 else "final")
        for i in range(n)
    ]


def test_bf16_batched_decode_on_cuda(tiny_model_dir: Path):
    from asr_worker.models.loader import load_engine

    eng = load_engine(tiny_model_dir, "cuda")
    major, _ = torch.cuda.get_device_capability()
    expected = "bf16" if major >= 8 else "fp32"
    assert eng.dtype == expected
    assert next(eng.model.llm.parameters()).dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    assert next(eng.model.audio_encoder.parameters()).dtype == torch.float32
    assert next(eng.model.llm.parameters()).is_cuda
    eng.warmup()
    reqs = _requests(8)
    out = eng.decode_batch(reqs)
    assert len(out) == len(reqs)
    assert all(isinstance(r.text, str) for r in out)
    # Deterministic on the same device and batch.
    assert eng.decode_batch(reqs) == out


def test_fp32_on_cuda_batched_agrees_with_one_at_a_time(tiny_model_dir: Path):
    # Bitwise equality is a CPU guarantee only (cuDNN/cuBLAS pick kernels by shape), so on
    # CUDA a padding or splicing bug shows as most requests disagreeing.
    from asr_worker.models.loader import load_engine

    eng = load_engine(tiny_model_dir, "cuda", dtype="fp32")
    reqs = _requests(6)
    batched = eng.decode_batch(reqs)
    singles = [eng.decode_batch([r])[0] for r in reqs]
    agree = sum(a.text == b.text for a, b in zip(batched, singles, strict=True))
    assert agree >= len(reqs) - 1, (batched, singles)


def test_fp32_on_cuda_requests_joining_a_running_batch_agree_with_one_at_a_time(tiny_model_dir: Path):
    # Iteration-level batching on the device: half the requests join while the others are
    # mid-decode (the KV cache is re-padded and merged on the GPU).
    from asr_worker.models.loader import load_engine

    eng = load_engine(tiny_model_dir, "cuda", dtype="fp32")
    reqs = _requests(6)
    done = {}
    first = eng.add_requests(reqs[:3])
    for _ in range(3):
        done.update(eng.step())
    later = eng.add_requests(reqs[3:])
    while eng.active:
        done.update(eng.step())
    joined = [done[h] for h in first + later]
    singles = [eng.decode_batch([r])[0] for r in reqs]
    agree = sum(a.text == b.text for a, b in zip(joined, singles, strict=True))
    assert agree >= len(reqs) - 1, (joined, singles)


@pytest.mark.skipif(os.environ.get("ASR_TEST_REAL_SHAPES") != "1", reason="set ASR_TEST_REAL_SHAPES=1")
def test_real_shapes_batched_decode(tmp_path: Path):
    from asr_worker.models import build_tiny_model
    from asr_worker.models.loader import load_engine

    model_dir = build_tiny_model(tmp_path / "real", real_shapes=True)
    eng = load_engine(model_dir, "cuda", forced_tokens_per_second=5.0)
    eng.warmup()
    for n in (1, 16, 64):
        reqs = [DecodeRequest(_audio(3.0, i), DecodeOptions()) for i in range(n)]
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = eng.decode_batch(reqs)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        assert len(out) == n
        assert all(len(ids) == 15 for ids in eng.last_generated)
        print(f"real shapes, batch {n} x 3 s: {dt * 1000:.0f} ms, RTF {dt / (3.0 * n):.4f}")


@pytest.mark.parametrize("dtype", ["fp32", "auto"])
def test_finals_drafted_from_partials_on_cuda_agree_with_undrafted(sharp_model_dir: Path, dtype: str):
    # Draft verification on the device: each final is prefilled with its segment's partial
    # answer (engine/drafts.py) and must decode what it decodes without one (exact on CPU;
    # on CUDA kernels differ by shape, so allow one near-tie flip, as above).
    from dataclasses import replace

    from asr_worker.engine.base import SegmentRef
    from asr_worker.models.loader import load_engine

    eng = load_engine(sharp_model_dir, "cuda", dtype=dtype, max_tokens_per_second=0, max_new_tokens=24)
    finals = [replace(r, kind="final", segment=SegmentRef(("gpu", i), 0)) for i, r in enumerate(_requests(6))]
    eng.use_drafts = False
    plain = eng.decode_batch([replace(r, segment=None) for r in finals])
    eng.use_drafts = True
    eng.decode_batch([
        replace(r, kind="partial", audio=r.audio if i % 2 else r.audio[: r.audio.size * 2 // 3])
        for i, r in enumerate(finals)
    ])
    drafted = eng.decode_batch(finals)
    agree = sum(a.text == b.text for a, b in zip(drafted, plain, strict=True))
    assert agree >= len(finals) - 1, (drafted, plain)
    assert eng.work.draft_accepted.get("final", 0) > 0
